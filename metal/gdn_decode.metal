// gdn_decode: one decode step of a Gated DeltaNet mixer after its input projections, fused into one launch:
// causal conv (and the conv history it leaves), SiLU, L2-normed q/k (q scaled by Dk^-1/2), the decay and beta
// gates, the delta rule, and the gated RMSNorm. Unfused that is ~8 operations per layer and token, and
// decode on a GPU pays per operation, not per byte.
// The input projections arrive as one row per sequence, proj = [qkv | z | b | a] (as one matmul makes them: no
// copies to split them). Reference: GatedDeltaNet.mix in qwen35_mlx/model/gated_deltanet.py at T = 1.
// Grid (NT, Hv, B), threadgroup (NT, 1, 1): one threadgroup per value head. The state walks in passes of NT / L rows: L neighbouring lanes
// share a row, each holding Dk / L consecutive keys in registers (as gdn_step), so it is read and written once.
// Every conv history channel is written by one threadgroup: v channels by their value head, q/k channels by the
// first value head of their key head.
// OUT: the layer's output projection too, as partial sums: y [B, Hv, HO] float32 (OutT), y[b, hv] = w_out[:, hv Dv
// : hv Dv + Dv] . (this head's normed output, rounded to InT as the matmul would read it); norm_gemv adds the
// Hv parts to the residual stream. Saves the out_proj launch; the weight slice (HO x Dv) streams through one
// threadgroup per head. Else y [B, Hv Dv] is the normed output in InT (OutT), w_out unread.
constexpr int EPL = Dk / L;
constexpr int R = NT / L;
constexpr int NSG = NT / 32;
constexpr int KEY_DIM = Hk * Dk;
constexpr int CONV_DIM = 2 * KEY_DIM + Hv * Dv;
constexpr int P = CONV_DIM + Hv * Dv + 2 * Hv;   // proj row: qkv, z, b, a
const int hv = int(tgid.y);
const int b = int(tgid.z);
const int hk = hv / (Hv / Hk);
const bool owns_qk = hv % (Hv / Hk) == 0;
const int go = b * Hv + hv;
threadgroup float qS[Dk];
threadgroup float kS[Dk];
threadgroup float vS[Dv];
threadgroup float yS[Dv];
threadgroup float red[2 * NSG];

// 1. conv + SiLU of this head's channels; the history shifted by one token.
const device InT* xin = proj + (int64_t)b * P;
const device InT* hin = conv_in + (int64_t)b * (K - 1) * CONV_DIM;
device InT* hout = conv_out + (int64_t)b * (K - 1) * CONV_DIM;
for (int i = int(tid); i < 2 * Dk + Dv; i += NT) {
  const int c = i < Dk ? hk * Dk + i : (i < 2 * Dk ? KEY_DIM + hk * Dk + i - Dk : 2 * KEY_DIM + hv * Dv + i - 2 * Dk);
  float acc = float(conv_w[c * K + K - 1]) * float(xin[c]);
  UNROLL for (int j = 0; j < K - 1; ++j) acc += float(conv_w[c * K + j]) * float(hin[j * CONV_DIM + c]);
  const float act = acc / (1.0f + fexp(-acc));
  if (i < Dk) {
    qS[i] = act;
  } else if (i < 2 * Dk) {
    kS[i - Dk] = act;
  } else {
    vS[i - 2 * Dk] = act;
  }
  if (i >= 2 * Dk || owns_qk) {
    UNROLL for (int j = 0; j < K - 2; ++j) hout[j * CONV_DIM + c] = hin[(j + 1) * CONV_DIM + c];
    hout[(K - 2) * CONV_DIM + c] = xin[c];
  }
}
BARRIER();

// 2. L2 norms of q and k (eps on the sum of squares, as the reference) and the gates, all float32.
float pq = 0.0f;
float pk = 0.0f;
for (int i = int(tid); i < Dk; i += NT) {
  pq += qS[i] * qS[i];
  pk += kS[i] * kS[i];
}
UNROLL for (int m = 16; m >= 1; m >>= 1) {
  pq += shfl_xor(pq, m);
  pk += shfl_xor(pk, m);
}
if (lane == 0) {
  red[sg] = pq;
  red[NSG + sg] = pk;
}
BARRIER();
float sq = 0.0f;
float sk = 0.0f;
UNROLL for (int i = 0; i < NSG; ++i) {
  sq += red[i];
  sk += red[NSG + i];
}
const float qscale = frsqrt(sq + 1e-6f) * frsqrt(float(Dk));
const float kscale = frsqrt(sk + 1e-6f);
const float xa = float(xin[CONV_DIM + Hv * Dv + Hv + hv]) + float(dt_bias[hv]);
const float softplus = (xa > 0.0f ? xa : 0.0f) + flog(1.0f + fexp(xa > 0.0f ? -xa : xa));  // logaddexp(x, 0)
const float decay = fexp(-fexp(float(A_log[hv])) * softplus);
const float bt = 1.0f / (1.0f + fexp(-float(xin[CONV_DIM + Hv * Dv + hv])));

// 3. the delta rule, NT / L rows per pass; y before the norm to yS.
const int li = int(tid) % L;
const int ko = li * EPL;
for (int r0 = 0; r0 < Dv; r0 += R) {
  const int dv = r0 + int(tid) / L;
  const bool row = dv < Dv;
  const int64_t so = (((int64_t)b * Hv + hv) * Dv + (row ? dv : 0)) * Dk + ko;
  float s[EPL];
  float kv = 0.0f;
  UNROLL for (int e = 0; e < EPL; ++e) {
    s[e] = row ? state_in[so + e] * decay : 0.0f;
    kv += s[e] * kS[ko + e];
  }
  UNROLL for (int m = 1; m < L; m <<= 1) kv += shfl_xor(kv, m);
  const float delta = ((row ? vS[dv] : 0.0f) - kv * kscale) * bt;
  float o = 0.0f;
  UNROLL for (int e = 0; e < EPL; ++e) {
    s[e] += kS[ko + e] * kscale * delta;
    o += s[e] * qS[ko + e];
  }
  UNROLL for (int m = 1; m < L; m <<= 1) o += shfl_xor(o, m);
  if (row && li == 0) yS[dv] = o * qscale;
  if (row) {
    UNROLL for (int e = 0; e < EPL; ++e) state_out[so + e] = s[e];
  }
}
BARRIER();

// 4. gated RMSNorm over the head: w * y / rms(y) * silu(z), rounded once to InT.
float py = 0.0f;
for (int i = int(tid); i < Dv; i += NT) py += yS[i] * yS[i];
UNROLL for (int m = 16; m >= 1; m >>= 1) py += shfl_xor(py, m);
if (lane == 0) red[sg] = py;
BARRIER();
float sy = 0.0f;
UNROLL for (int i = 0; i < NSG; ++i) sy += red[i];
const float inv = frsqrt(sy / float(Dv) + eps[0]);
const device InT* zb = xin + CONV_DIM + hv * Dv;
for (int i = int(tid); i < Dv; i += NT) {
  const float zi = float(zb[i]);
  const InT yi = static_cast<InT>(float(norm_w[i]) * yS[i] * inv * zi / (1.0f + fexp(-zi)));
  if (OUT) {
    yS[i] = float(yi);                                // each thread rewrites only what it read
  } else {
    y[(int64_t)go * Dv + i] = static_cast<OutT>(yi);
  }
}

// 5. (OUT) this head's part of the output projection: simdgroup sg takes rows sg RO, ... in steps of RO rows
// (their loads issued together), a lane EPN consecutive columns per chunk of 32 EPN (up to 16 bytes: Dv * sizeof(InT)
// a multiple of 4 bytes, EPN the widest piece that tiles Dv).
if (OUT) {
  constexpr int E1 = 4 / int(sizeof(InT));
  constexpr int EPN = Dv % (128 * E1) == 0 ? 4 * E1 : (Dv % (64 * E1) == 0 ? 2 * E1 : E1);
  constexpr int NCH = (Dv + 32 * EPN - 1) / (32 * EPN);
  constexpr int RO = 4;
  BARRIER();
  float yv[NCH][EPN];
  UNROLL for (int ch = 0; ch < NCH; ++ch) {
    const int c = (ch * 32 + int(lane)) * EPN;
    UNROLL for (int e = 0; e < EPN; ++e) yv[ch][e] = c < Dv ? yS[c + e] : 0.0f;
  }
  const device InT* wb = w_out + hv * Dv;
  for (int n0 = int(sg) * RO; n0 < HO; n0 += NSG * RO) {
    float acc[RO];
    UNROLL for (int r = 0; r < RO; ++r) {
      acc[r] = 0.0f;
      UNROLL for (int ch = 0; ch < NCH; ++ch) {
        const int c = (ch * 32 + int(lane)) * EPN;
        if (c < Dv && n0 + r < HO) {
          float wv[EPN];
          vload<EPN>(wv, wb + (int64_t)(n0 + r) * (Hv * Dv) + c);
          UNROLL for (int e = 0; e < EPN; ++e) acc[r] += wv[e] * yv[ch][e];
        }
      }
    }
    UNROLL for (int r = 0; r < RO; ++r) {
      UNROLL for (int m = 16; m >= 1; m >>= 1) acc[r] += shfl_xor(acc[r], m);
      if (int(lane) == r && n0 + r < HO) y[(int64_t)go * HO + n0 + r] = static_cast<OutT>(acc[r]);
    }
  }
}

// gdn_decode: one decode step of a Gated DeltaNet mixer after its input projections, fused into one launch:
// causal conv (and the conv history it leaves), SiLU, L2-normed q/k (q scaled by Dk^-1/2), the decay and beta
// gates and the delta rule. Unfused that is ~7 operations per layer and token, and decode on a GPU pays per
// operation. y is the rule's output rounded to InT (as the reference rounds it before the norm); the gated RMSNorm
// needs a whole head, so it runs where y is read: norm_gemv (GATED, with the output projection) or rms_norm.
// The input projections arrive as one row per sequence, proj = [qkv | z | b | a] (as one matmul makes them: no
// copies to split them). Reference: GatedDeltaNet.mix in qwen35_mlx/model/gated_deltanet.py at T = 1.
// Grid (NT, Hv * SPLIT, B), threadgroup (NT, 1, 1): a value head's Dv state rows are split over SPLIT
// threadgroups of RB = NT / L rows (one threadgroup per head left most of a large GPU idle: 16 threadgroups for
// the 0.8B model, each walking 64 KiB of state). L neighbouring lanes share a row, each holding Dk / L consecutive
// keys in registers, loaded first so that their latency hides under the conv and the norms.
// Each threadgroup convolves its head's q and k channels (2 Dk: cheap) and its RB v channels. Every conv history
// channel is written once: v channels by their row block, q/k channels by the first row block of the first value
// head of their key head.
constexpr int EPL = Dk / L;
constexpr int RB = NT / L;
constexpr int SPLIT = (Dv + RB - 1) / RB;
constexpr int NSG = NT / 32;
constexpr int KEY_DIM = Hk * Dk;
constexpr int CONV_DIM = 2 * KEY_DIM + Hv * Dv;
constexpr int P = CONV_DIM + Hv * Dv + 2 * Hv;   // proj row: qkv, z, b, a
const int hv = int(tgid.y) / SPLIT;
const int r0 = (int(tgid.y) % SPLIT) * RB;       // this threadgroup's first state row
const int b = int(tgid.z);
const int hk = hv / (Hv / Hk);
const bool owns_qk = hv % (Hv / Hk) == 0 && r0 == 0;
const int nv = Dv - r0 < RB ? Dv - r0 : RB;      // v channels (rows) of this block
threadgroup float qS[Dk];
threadgroup float kS[Dk];
threadgroup float vS[RB];
threadgroup float red[2 * NSG];

// 0. this thread's piece of the state: row dv, keys ko .. ko + EPL.
const int li = int(tid) % L;
const int ko = li * EPL;
const int dv = r0 + int(tid) / L;
const bool row = dv < Dv;
const int64_t so = (((int64_t)b * Hv + hv) * Dv + (row ? dv : 0)) * Dk + ko;
float s[EPL];
UNROLL for (int e = 0; e < EPL; ++e) s[e] = row ? state_in[so + e] : 0.0f;

// 1. conv + SiLU of q, k and this block's v channels; the history shifted by one token.
const device InT* xin = proj + (int64_t)b * P;
const device InT* hin = conv_in + (int64_t)b * (K - 1) * CONV_DIM;
device InT* hout = conv_out + (int64_t)b * (K - 1) * CONV_DIM;
for (int i = int(tid); i < 2 * Dk + nv; i += NT) {
  const int c = i < Dk ? hk * Dk + i : (i < 2 * Dk ? KEY_DIM + hk * Dk + i - Dk : 2 * KEY_DIM + hv * Dv + r0 + i - 2 * Dk);
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

// 3. the delta rule on this thread's row piece; the L lanes of a row sum their keys.
float kv = 0.0f;
UNROLL for (int e = 0; e < EPL; ++e) {
  s[e] *= decay;
  kv += s[e] * kS[ko + e];
}
UNROLL for (int m = 1; m < L; m <<= 1) kv += shfl_xor(kv, m);
const float delta = ((row ? vS[dv - r0] : 0.0f) - kv * kscale) * bt;
float o = 0.0f;
UNROLL for (int e = 0; e < EPL; ++e) {
  s[e] += kS[ko + e] * kscale * delta;
  o += s[e] * qS[ko + e];
}
UNROLL for (int m = 1; m < L; m <<= 1) o += shfl_xor(o, m);
if (row && li == 0) y[((int64_t)b * Hv + hv) * Dv + dv] = static_cast<InT>(o * qscale);
if (row) {
  UNROLL for (int e = 0; e < EPL; ++e) state_out[so + e] = s[e];
}

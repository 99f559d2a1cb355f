// attn_qk: a gated-attention layer's query and key heads after their projections, as attention reads them:
// each head RMS-normed (float32, times the float32 weight, rounded to InT: the q_norm / k_norm reference),
// then NeoX rope on its first ROT channels (pairs c, c + ROT/2) at position pos[0] + t, written head-major
// [B, heads, T, D]. One launch where MLX ops take six in decode (a copy of each strided head, two norms, two
// ropes). Reference: the MLX-ops branch of Attention.project (RMSNorm, then mx.fast.rope).
// The key heads' threadgroups also copy their value head to v [B, NK, T, D] as it is (what the KV cache stores):
// the copy rides in this launch, where a strided view of the row would be three graph nodes per layer.
// proj [B, T, P] is the fused projection row: NQ heads of [query | gate] (2 D each), NK key heads (D each),
// then the values. Grid (NT * T, NQ + NK, B), threadgroup (NT, 1, 1): one threadgroup per (token, head);
// head j < NQ is query j, the others keys. A thread keeps its groups of 4 channels, 4 tid, 4 (tid + NT), ...,
// in registers through the norm; the rounded normed head goes through threadgroup memory to the rope, whose
// pairs lie in other threads.
constexpr int G = D / 4;
constexpr int EPT = (G + NT - 1) / NT;
constexpr int NSG = NT / 32;
constexpr int P = 2 * NQ * D + 2 * NK * D;
constexpr int HALF = ROT / 2;
const int T = proj_shape[1];
const int t = int(tgid.x);
const int j = int(tgid.y);
const int b = int(tgid.z);
const bool isq = j < NQ;
const int64_t src = (int64_t(b) * T + t) * P + (isq ? 2 * j * D : 2 * NQ * D + (j - NQ) * D);
threadgroup float head[D];
threadgroup float red[NSG];

float x[EPT][4];
float ss = 0.0f;
UNROLL for (int r = 0; r < EPT; ++r) {
  const int i = 4 * (int(tid) + r * NT);
  if (i < D) {
    vload<4>(x[r], proj + src + i);
    UNROLL for (int e = 0; e < 4; ++e) ss += x[r][e] * x[r][e];
  }
}
UNROLL for (int m = 16; m >= 1; m >>= 1) ss += shfl_xor(ss, m);
if (lane == 0) red[sg] = ss;
BARRIER();
float total = 0.0f;
UNROLL for (int s = 0; s < NSG; ++s) total += red[s];
const float inv = frsqrt(total / float(D) + bits_float(EPS));
UNROLL for (int r = 0; r < EPT; ++r) {
  const int i = 4 * (int(tid) + r * NT);
  if (i < D) {
    UNROLL for (int e = 0; e < 4; ++e) {
      const float w = isq ? qw[i + e] : kw[i + e];
      head[i + e] = float(static_cast<InT>(w * (x[r][e] * inv)));
    }
  }
}
BARRIER();
const float p = float(pos[0] + t);
const int64_t dst = isq ? ((int64_t(b) * NQ + j) * T + t) * D : ((int64_t(b) * NK + (j - NQ)) * T + t) * D;
UNROLL for (int r = 0; r < EPT; ++r) {
  const int i = 4 * (int(tid) + r * NT);
  if (i < D) {
    UNROLL for (int e = 0; e < 4; ++e) {
      const int c = i + e;
      float y = head[c];
      if (c < ROT) {
        const float ang = p * inv_freq[c < HALF ? c : c - HALF];
        const float cs = fcos(ang);
        const float sn = fsin(ang);
        y = c < HALF ? y * cs - head[c + HALF] * sn : y * cs + head[c - HALF] * sn;
      }
      if (isq) {
        q[dst + c] = static_cast<InT>(y);
      } else {
        k[dst + c] = static_cast<InT>(y);
      }
    }
  }
}
if (!isq) {                                                // the value head, copied as it is
  const int64_t vsrc = src + NK * D;
  for (int i = int(tid); i < D; i += NT) v[dst + i] = proj[vsrc + i];
}

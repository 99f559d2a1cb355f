// rms_norm: RMSNorm of rows, y = w * (x * rsqrt(mean(x^2) + eps)) in float32, rounded once to InT (as
// transformers: normalise in float32, multiply by the float32 weight, cast). With ADD the row is first the
// residual sum x + h, rounded to InT (the reference adds in the activation dtype), and that sum is written to
// res too. With GATE (the GDN output norm, rows of one head) y = w * x / rms(x) * silu(z), rounded once to InT.
// One launch where MLX ops take two to four. Reference: the MLX-ops branch of qwen35_mlx/kernels/norm.py.
// Grid (NT * ceil(rows / RPT), 1, 1), threadgroup NT = 32 WPR RPT: WPR simdgroups per row (one for rows up to
// 128 16-byte groups), RPT rows per threadgroup, so many rows are in flight and only a row spread over several
// simdgroups waits at a barrier. A lane keeps its 16-byte groups (VW elements) lane, lane + 32 WPR, ... of its
// part in registers between the sum of squares and the scaling. meta: [rows].
constexpr int VW = 16 / int(sizeof(InT));
constexpr int G = H / VW;                       // groups per row (H % VW == 0)
constexpr int EPT = (G + 32 * WPR - 1) / (32 * WPR);
const int rows = meta[0];
const int rl = int(sg) / WPR;                   // this simdgroup's row in the threadgroup
const int part = int(sg) % WPR;
const int r = int(tgid.x) * RPT + rl;
const bool live = r < rows;                     // the last threadgroup's spare rows still reach the barrier
const int64_t row = int64_t(live ? r : 0) * H;
threadgroup float red[WPR > 1 ? RPT * WPR : 1];

float v[EPT][VW];
float ss = 0.0f;
UNROLL for (int j = 0; j < EPT; ++j) {
  const int gi = part * 32 + int(lane) + j * 32 * WPR;
  if (live && gi < G) {
    const int i = gi * VW;
    vload<VW>(v[j], x + row + i);
    if (ADD) {
      float hv[VW];
      vload<VW>(hv, h + row + i);
      UNROLL for (int e = 0; e < VW; ++e) v[j][e] = float(static_cast<InT>(v[j][e] + hv[e]));
      vstore<VW>(res + row + i, v[j]);
    }
    UNROLL for (int e = 0; e < VW; ++e) ss += v[j][e] * v[j][e];
  }
}
UNROLL for (int m = 16; m >= 1; m >>= 1) ss += shfl_xor(ss, m);
if (WPR > 1) {
  if (lane == 0) red[sg] = ss;
  BARRIER();
  ss = 0.0f;
  UNROLL for (int s = 0; s < WPR; ++s) ss += red[rl * WPR + s];
}
const float inv = frsqrt(ss / float(H) + bits_float(EPS));
UNROLL for (int j = 0; j < EPT; ++j) {
  const int gi = part * 32 + int(lane) + j * 32 * WPR;
  if (live && gi < G) {
    const int i = gi * VW;
    float wv[VW];
    vload<VW>(wv, w + i);
    UNROLL for (int e = 0; e < VW; ++e) v[j][e] = wv[e] * (v[j][e] * inv);
    if (GATE) {
      float zv[VW];
      vload<VW>(zv, z + row + i);
      UNROLL for (int e = 0; e < VW; ++e) v[j][e] *= zv[e] / (1.0f + fexp(-zv[e]));
    }
    vstore<VW>(y + row + i, v[j]);
  }
}

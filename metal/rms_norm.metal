// rms_norm: RMSNorm of rows, y = w * (x * rsqrt(mean(x^2) + eps)) in float32, rounded once to InT (as
// transformers: normalise in float32, multiply by the float32 weight, cast). With ADD the row is first the
// residual sum x + h, rounded to InT (the reference adds in the activation dtype), and that sum is written to
// res too. One launch where MLX ops take three (add, rms_norm, cast): decode on a GPU pays per operation.
// Reference: the MLX-ops branch of qwen35_mlx/kernels/norm.py. Grid (NT * rows, 1, 1), threadgroup (NT, 1, 1):
// one threadgroup per row of H elements (H % 4 == 0); a thread keeps its groups of 4 consecutive elements,
// 4 tid, 4 (tid + NT), ..., in registers between the sum of squares and the scaling.
constexpr int G = H / 4;
constexpr int EPT = (G + NT - 1) / NT;
constexpr int NSG = NT / 32;
const int64_t row = int64_t(tgid.x) * H;
threadgroup float red[NSG];

float v[EPT][4];
float ss = 0.0f;
UNROLL for (int j = 0; j < EPT; ++j) {
  const int i = 4 * (int(tid) + j * NT);
  if (i < H) {
    vload<4>(v[j], x + row + i);
    if (ADD) {
      float hv[4];
      vload<4>(hv, h + row + i);
      UNROLL for (int e = 0; e < 4; ++e) {
        const InT sum = static_cast<InT>(v[j][e] + hv[e]);
        res[row + i + e] = sum;
        v[j][e] = float(sum);
      }
    }
    UNROLL for (int e = 0; e < 4; ++e) ss += v[j][e] * v[j][e];
  }
}
UNROLL for (int m = 16; m >= 1; m >>= 1) ss += shfl_xor(ss, m);
if (lane == 0) red[sg] = ss;
BARRIER();
float total = 0.0f;
UNROLL for (int s = 0; s < NSG; ++s) total += red[s];
const float inv = frsqrt(total / float(H) + eps[0]);
UNROLL for (int j = 0; j < EPT; ++j) {
  const int i = 4 * (int(tid) + j * NT);
  if (i < H) {
    UNROLL for (int e = 0; e < 4; ++e) y[row + i + e] = static_cast<InT>(float(w[i + e]) * (v[j][e] * inv));
  }
}

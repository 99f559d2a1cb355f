// norm_gemv: the first steps of a decode layer block in one launch: the residual add, the RMSNorm and the input
// projections of one token (a matrix-vector product), where MLX ops take three or four launches, and decode on a
// GPU pays per launch. Reference: rms_norm (qwen35_mlx/kernels/norm.py) then the matmul (then silu(g) * u), MLX ops.
//   xn = InT(nw * rmsnorm(s)), s = InT(x + h) (ADD; s is written to res by threadgroup 0) or s = x
//   y[n] = InT(W[n] . xn) for n < N, or with GLU y[n] = InT(silu(g) u), g = W[n] . xn, u = W[n + N] . xn
// PARTS > 0: h is PARTS float32 partial sums per token, [M, PARTS, K], added in order (a GDN layer's output
// projection as gdn_decode leaves it, one part per value head: the sum costs reads, not a launch).
// x, h [M, K], nw [K] float32, W [N or 2 N, K] row-major (nn.Linear's weight), y [M, N], res [M, K].
// Grid (NT * ceil(N / (NW R)), 1, M), threadgroup NT = 32 NW: each threadgroup normalises its token's row into
// threadgroup memory (K values: cheap, and no launch in between), then simdgroup sg takes R outputs, a lane
// reading VW weights of a row (16 bytes) per step, all R (GLU: 2 R) rows' loads of U steps issued together.
constexpr int NW = NT / 32;
constexpr int VW = 16 / int(sizeof(InT));
constexpr int U = 2;
constexpr int SW = 32 * VW;                           // elements of a row per simdgroup step
constexpr int NR = GLU ? 2 : 1;                       // weight rows per output
const int m = int(tgid.z);
const device InT* xr = x + (int64_t)m * K;
const device auto* hr = h + (int64_t)m * (PARTS > 0 ? PARTS : 1) * K;   // InT rows, or float parts
threadgroup InT xs[K];
threadgroup float red[NW];

// 1. s = x (+ h), its sum of squares; then xn over s in place (each thread rescales only what it wrote).
float ss = 0.0f;
for (int i = 4 * int(tid); i < K; i += 4 * NT) {
  float v[4];
  vload<4>(v, xr + i);
  if (ADD) {
    float hv[4];
    vload<4>(hv, hr + i);
    for (int p = 1; p < PARTS; ++p) {
      float hp[4];
      vload<4>(hp, hr + (int64_t)p * K + i);
      UNROLL for (int e = 0; e < 4; ++e) hv[e] += hp[e];
    }
    UNROLL for (int e = 0; e < 4; ++e) {
      const InT s = static_cast<InT>(v[e] + hv[e]);
      if (tgid.x == 0) res[(int64_t)m * K + i + e] = s;
      v[e] = float(s);
    }
  }
  UNROLL for (int e = 0; e < 4; ++e) {
    xs[i + e] = static_cast<InT>(v[e]);
    ss += v[e] * v[e];
  }
}
for (int k = 16; k >= 1; k >>= 1) ss += shfl_xor(ss, k);
if (lane == 0) red[sg] = ss;
BARRIER();
float total = 0.0f;
UNROLL for (int w = 0; w < NW; ++w) total += red[w];
const float inv = frsqrt(total / float(K) + eps[0]);
for (int i = 4 * int(tid); i < K; i += 4 * NT) {
  UNROLL for (int e = 0; e < 4; ++e) xs[i + e] = static_cast<InT>(nw[i + e] * (float(xs[i + e]) * inv));
}
BARRIER();

// 2. R outputs per simdgroup: lane sums over its columns, then the simdgroup sums its lanes.
const int n0 = (int(tgid.x) * NW + int(sg)) * R;
float acc[R][NR];
UNROLL for (int r = 0; r < R; ++r) {
  UNROLL for (int j = 0; j < NR; ++j) acc[r][j] = 0.0f;
}
for (int kb = 0; kb < K; kb += U * SW) {
  uint wv[U][R][NR][4];
  UNROLL for (int u = 0; u < U; ++u) {
    const int k = kb + u * SW + int(lane) * VW;
    UNROLL for (int r = 0; r < R; ++r) {
      UNROLL for (int j = 0; j < NR; ++j) {
        const int n = n0 + r + j * N;
        if (k < K && n0 + r < N) {
          rload<VW>(wv[u][r][j], W + (int64_t)n * K + k);
        } else {
          for (int i = 0; i < 4; ++i) wv[u][r][j][i] = 0u;
        }
      }
    }
  }
  UNROLL for (int u = 0; u < U; ++u) {
    const int k = kb + u * SW + int(lane) * VW;
    if (k < K) {
      float xv[VW];
      for (int i = 0; i < VW; ++i) xv[i] = float(xs[k + i]);
      UNROLL for (int r = 0; r < R; ++r) {
        UNROLL for (int j = 0; j < NR; ++j) {
          float wf[VW];
          runpack<VW, InT>(wf, wv[u][r][j]);
          for (int i = 0; i < VW; ++i) acc[r][j] += wf[i] * xv[i];
        }
      }
    }
  }
}
UNROLL for (int r = 0; r < R; ++r) {
  UNROLL for (int j = 0; j < NR; ++j) {
    for (int k = 16; k >= 1; k >>= 1) acc[r][j] += shfl_xor(acc[r][j], k);
  }
  if (int(lane) == r && n0 + r < N) {
    float o = acc[r][0];
    if (GLU) {
      const float g = float(static_cast<InT>(acc[r][0]));        // the projections' own roundings
      const float u = float(static_cast<InT>(acc[r][NR - 1]));
      o = g / (1.0f + fexp(-g)) * u;
    }
    y[(int64_t)m * N + n0 + r] = static_cast<InT>(o);
  }
}

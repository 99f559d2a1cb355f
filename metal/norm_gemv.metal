// norm_gemv: a norm and the matrix-vector product after it, for one token, in one launch (MLX ops take three or
// four, and decode on a GPU pays per launch). The norm is one of two. Reference: the norm (qwen35_mlx/kernels/
// norm.py, rms_norm) then the matmul (then silu(g) * u), MLX ops.
//   decoder RMSNorm: xn = InT(nw * rmsnorm(s)), s = InT(x + h) (ADD; s is written to res by threadgroup 0) or s = x
//   GATED, the GDN output norm per head of DV channels: xn = InT(nw * x / rms(x) * silu(z)), x the scan's output,
//     z at column ZO of the row of HS values in h (the layer's projection row: no copy to cut it out)
//   y[n] = InT(W[n] . xn) for n < N, or with GLU y[n] = InT(silu(g) u), g = W[n] . xn, u = W[n + N] . xn
// x [M, K], nw [K] (GATED: [DV]) float32, W [N or 2 N, K] row-major (nn.Linear's weight), y [M, N], res [M, K].
// Grid (NT * ceil(N / (NW R)), 1, M), threadgroup NT = 32 NW: each threadgroup normalises its token's row into
// threadgroup memory (K values: cheap, and no launch in between), then simdgroup sg takes R outputs, a lane
// reading VW weights of a row (16 bytes) per step, all R (GLU: 2 R) rows' loads of U steps issued together.
constexpr int NW = NT / 32;
constexpr int VW = 16 / int(sizeof(InT));
constexpr int U = 2;
constexpr int SW = 32 * VW;                           // elements of a row per simdgroup step
constexpr int NR = GLU ? 2 : 1;                       // weight rows per output
constexpr int NG = GATED ? K / 4 : 1;                 // GATED: 4-channel groups (DV % 4 == 0: within one head)
constexpr int NH = GATED ? K / DV : 1;
const int m = int(tgid.z);
const device InT* xr = x + (int64_t)m * K;
threadgroup InT xs[K];
threadgroup float red[NW];
threadgroup float gsq[NG];                            // GATED: each group's sum of squares, then ...
threadgroup float hinv[NH];                           // ... each head's 1 / rms

if (GATED) {
  // 1. the squares by group, summed by head (a thread per head); then xn in place.
  const device InT* zr = h + (int64_t)m * HS + ZO;
  for (int i = 4 * int(tid); i < K; i += 4 * NT) {
    float v[4];
    vload<4>(v, xr + i);
    float ss = 0.0f;
    UNROLL for (int e = 0; e < 4; ++e) {
      xs[i + e] = static_cast<InT>(v[e]);
      ss += v[e] * v[e];
    }
    gsq[i / 4] = ss;
  }
  BARRIER();
  for (int hd = int(tid); hd < NH; hd += NT) {
    float ss = 0.0f;
    for (int g = hd * (DV / 4); g < (hd + 1) * (DV / 4); ++g) ss += gsq[g];
    hinv[hd] = frsqrt(ss / float(DV) + bits_float(EPS));
  }
  BARRIER();
  for (int i = 4 * int(tid); i < K; i += 4 * NT) {
    const float inv = hinv[i / DV];
    UNROLL for (int e = 0; e < 4; ++e) {
      const float zi = float(zr[i + e]);
      xs[i + e] = static_cast<InT>(float(nw[(i + e) % DV]) * float(xs[i + e]) * inv * zi / (1.0f + fexp(-zi)));
    }
  }
} else {
  // 1. s = x (+ h), its sum of squares; then xn over s in place (each thread rescales only what it wrote).
  const device InT* hr = h + (int64_t)m * K;
  float ss = 0.0f;
  for (int i = 4 * int(tid); i < K; i += 4 * NT) {
    float v[4];
    vload<4>(v, xr + i);
    if (ADD) {
      float hv[4];
      vload<4>(hv, hr + i);
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
  const float inv = frsqrt(total / float(K) + bits_float(EPS));
  for (int i = 4 * int(tid); i < K; i += 4 * NT) {
    UNROLL for (int e = 0; e < 4; ++e) xs[i + e] = static_cast<InT>(float(nw[i + e]) * (float(xs[i + e]) * inv));
  }
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

// attn_decode: one query per head (a decode step) over the first S rows of the KV cache buffers, the keys split
// over NS threadgroups so that a short step still spreads over the GPU (attn_decode_combine merges the splits).
// Reference: the MLX-ops path of Attention.attend (mx.fast.scaled_dot_product_attention).
// q [B, Hq, D]; kc, vc [B, Hkv, SC, D], the cache buffers as they are (no copy of the filled part); n_keys = [S],
// S <= SC filled rows (data: a compiled decode step reads it from the graph), meta = [L, SC, NS, TR]: L <= LMAX
// keys per threadgroup, NS >= ceil(S / L) splits. TAIL: rows from N0 = n_keys[1] on live in kt, vt
// [B, Hkv, TR, D] (row r at r - N0), the newest rows of a compiled decode step, written there so that the big
// buffers are not written (and so copied) while the step before still reads them. Grid (NT * NS, Hkv, B), threadgroup NT = 32 NW: threadgroup s takes
// keys [s L, s L + L) for all G = Hq / Hkv query heads of key head hk, so each key row is read once. Splits past
// S (a step compiled for the buffers' capacity SC, not for S) leave their outputs unwritten: the combine reads
// the first ceil(S / L).
// A key row is read by LPR lanes, VW elements each (16 bytes); a simdgroup reads RPW rows at a time.
// Out, float32, per (b, query head, split): o [D] = sum_j p_j v_j and l = sum_j p_j with p_j = 2^(s_j - m),
// m = the split's max of s_j = q . k_j scale log2(e).
constexpr int NW = NT / 32;
constexpr int G = Hq / Hkv;
constexpr int VW = 16 / int(sizeof(InT));
constexpr int LPR = D / VW;                    // lanes per key row (a power of 2 dividing 32)
constexpr int RPW = 32 / LPR;                  // rows per simdgroup step
constexpr int U = 4;                           // steps whose loads are in flight together
constexpr int WPL = 4;                         // 32-bit words per lane per row (16 bytes)
const int S = n_keys[0];
const int L = meta[0];
const int SC = meta[1];
const int NS = meta[2];
const int N0 = TAIL ? n_keys[1] : S;           // rows below N0 in kc, vc; from it on in kt, vt
const int TR = meta[3];
const float scale = bits_float(SCALE) * 1.4426950408889634f;
const int sp = int(tgid.x);
const int hk = int(tgid.y);
const int b = int(tgid.z);
const int j0 = sp * L;
const int n = (S - j0 < L ? S - j0 : L);     // keys of this split
const int sub = int(lane) / LPR;
const int part = int(lane) % LPR;
const int64_t kv0 = ((int64_t)b * Hkv + hk) * SC * D;
const int64_t kt0 = ((int64_t)b * Hkv + hk) * TR * D;
threadgroup float P[G * LMAX];                 // scores, then probabilities, of this split's keys
threadgroup float O[NW * D];                   // each simdgroup's share of sum_j p_j v_j, one head at a time
if (j0 >= S) return;                           // the whole threadgroup: an idle split (no barrier reached)

// This lane's part of the U steps' rows from jb on (rows past the split read as zeros), as raw words; a row
// from N0 on comes from the tail.
#define LOAD_ROWS(w, src, tsrc)                                                \
  UNROLL for (int u = 0; u < U; ++u) {                                         \
    const int j = jb + u * RPW + sub;                                          \
    const int r = j0 + j;                                                      \
    if (j < n && r < N0) {                                                     \
      rload<VW>(w[u], src + kv0 + (int64_t)r * D + part * VW);                 \
    } else if (j < n) {                                                        \
      rload<VW>(w[u], tsrc + kt0 + (int64_t)(r - N0) * D + part * VW);         \
    } else {                                                                   \
      for (int i = 0; i < WPL; ++i) w[u][i] = 0u;                              \
    }                                                                          \
  }

// 1. Scores: each simdgroup takes U steps of RPW rows at a time (their loads issued together, kept as raw words
//    until used: latency, not bandwidth, bounds a split this small otherwise); the LPR lanes of a row sum their
//    partial dot products. The loop is uniform over a simdgroup, so every lane takes part in the shuffles.
float qv[G][VW];
UNROLL for (int g = 0; g < G; ++g) vload<VW>(qv[g], q + ((int64_t)b * Hq + hk * G + g) * D + part * VW);
for (int jb = int(sg) * RPW * U; jb < n; jb += NW * RPW * U) {
  uint kw[U][WPL];
  LOAD_ROWS(kw, kc, kt)
  UNROLL for (int u = 0; u < U; ++u) {
    const int j = jb + u * RPW + sub;
    float kf[VW];
    runpack<VW, InT>(kf, kw[u]);
    UNROLL for (int g = 0; g < G; ++g) {
      float d = 0.0f;
      for (int i = 0; i < VW; ++i) d += qv[g][i] * kf[i];
      for (int m = 1; m < LPR; m <<= 1) d += shfl_xor(d, m);
      if (part == 0 && j < n) P[g * LMAX + j] = d * scale;
    }
  }
}
BARRIER();

// 2. Per head: the split's max, the probabilities and their sum (simdgroup g % NW takes head g).
for (int g = int(sg); g < G; g += NW) {
  float top = -INFINITY;
  for (int j = int(lane); j < n; j += 32) top = P[g * LMAX + j] > top ? P[g * LMAX + j] : top;
  for (int m = 16; m > 0; m >>= 1) {
    const float o = shfl_xor(top, m);
    top = o > top ? o : top;
  }
  float sum = 0.0f;
  for (int j = int(lane); j < n; j += 32) {
    const float p = fexp2(P[g * LMAX + j] - top);
    P[g * LMAX + j] = p;
    sum += p;
  }
  for (int m = 16; m > 0; m >>= 1) sum += shfl_xor(sum, m);
  if (lane == 0) {
    const int64_t r = ((int64_t)b * Hq + hk * G + g) * NS + sp;
    m_out[r] = top;
    l_out[r] = sum;
  }
}
BARRIER();

// 3. sum_j p_j v_j: rows as in 1; the RPW rows of a step, then the simdgroups, are summed.
float acc[G][VW];
UNROLL for (int g = 0; g < G; ++g) {
  for (int i = 0; i < VW; ++i) acc[g][i] = 0.0f;
}
for (int jb = int(sg) * RPW * U; jb < n; jb += NW * RPW * U) {
  uint vw[U][WPL];
  LOAD_ROWS(vw, vc, vt)
  UNROLL for (int u = 0; u < U; ++u) {
    const int j = jb + u * RPW + sub;
    if (j < n) {
      float vf[VW];
      runpack<VW, InT>(vf, vw[u]);
      UNROLL for (int g = 0; g < G; ++g) {
        const float p = P[g * LMAX + j];
        for (int i = 0; i < VW; ++i) acc[g][i] += p * vf[i];
      }
    }
  }
}
UNROLL for (int g = 0; g < G; ++g) {
  for (int i = 0; i < VW; ++i) {
    for (int m = LPR; m < 32; m <<= 1) acc[g][i] += shfl_xor(acc[g][i], m);
  }
  if (sub == 0) {
    for (int i = 0; i < VW; ++i) O[int(sg) * D + part * VW + i] = acc[g][i];
  }
  BARRIER();
  for (int d = int(tid); d < D; d += NT) {
    float s = 0.0f;
    for (int w = 0; w < NW; ++w) s += O[w * D + d];
    o_out[(((int64_t)b * Hq + hk * G + g) * NS + sp) * D + d] = s;
  }
  BARRIER();
}
#undef LOAD_ROWS

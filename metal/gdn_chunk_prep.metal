// gdn_chunk_prep: the chunk-local, parallel half of the chunk-wise gated delta rule. Reference: gdn_chunked
// in qwen35_mlx/kernels/gdn.py (its docstring has the algebra). Grid (NT * N, Hv, B), threadgroup (NT, 1, 1):
// one threadgroup per (chunk n, value head hv, batch b). Writes, all float32, for the chunk's C steps:
//   Gc  [C]     G = cumsum(g)                  Aqk [C, C] (q_i . k_j) e^(G_i - G_j) for i >= j, else 0
//   U   [C, Dv] T diag(beta) V                 W   [C, Dk] T diag(beta e^G) K,   T = (I - A)^-1,
//                                              A_ij = -beta_i e^(G_i - G_j) k_i . k_j  (i > j)
// so the sequential scan (gdn_chunk_scan) needs only u = U - W h, y = e^G q h + Aqk u, h' = e^G_C h + K'^T u.
// Steps t >= T are padding: g = beta = 0 and zero q, k, v, which leaves the state untouched.
// Step 4 stages [v | k] through threadgroup memory in column slices (16-byte loads, one wait per slice).
constexpr int NSG = NT / 32;
constexpr int LD = C + 4;                      // M row stride: fragment rows land on distinct banks
constexpr int RP = C / 16;                     // 16-row pairs of a chunk
constexpr int NLOW = RP * (RP + 1);            // 16x8 tiles of C x C on or below the diagonal
constexpr int LPS = (NLOW + NSG - 1) / NSG;    // of those, per simdgroup
constexpr int KGI = 8 / int(sizeof(InT));      // k-steps per 16-byte load of InT (tiles_cuda.h, load_a)
constexpr int VW = 16 / int(sizeof(InT));      // InT elements per 16-byte load
constexpr int VS = 32;                         // [v | k] columns per slice in step 4
constexpr int LDV = VS + 4;
constexpr int NCOL = Dv + Dk;
constexpr int MP = PREC == 0 ? 2 : PREC;       // step 4's operands are made with opnd<PREC> (tiles_cuda.h)
const int n_tok = meta[0];
const int N = meta[1];
const int n = int(tgid.x);
const int hv = int(tgid.y);
const int b = int(tgid.z);
const int hk = hv / (Hv / Hk);
const int t0 = n * C;
const int64_t cid = ((int64_t)b * Hv + hv) * N + n;
const device InT* qb = q + (int64_t)b * n_tok * Hk * Dk + hk * Dk;  // step t at [t * Hk * Dk]
const device InT* kb = k + (int64_t)b * n_tok * Hk * Dk + hk * Dk;
const device InT* vb = v + (int64_t)b * n_tok * Hv * Dv + hv * Dv;  // step t at [t * Hv * Dv]
threadgroup float Gs[C];
threadgroup float Bs[C];
threadgroup float M[C * LD];
threadgroup float X[C * LDV];

// 1. Gates, then G = cumsum(g) within the chunk.
if (int(tid) < C) {
  const int t = t0 + int(tid);
  const int64_t o = ((int64_t)b * n_tok + t) * Hv + hv;
  Gs[tid] = t < n_tok ? g[o] : 0.0f;
  Bs[tid] = t < n_tok ? beta[o] : 0.0f;
}
BARRIER();
float gsum = 0.0f;
if (int(tid) < C) {
  for (int j = 0; j <= int(tid); ++j) gsum += Gs[j];
}
BARRIER();
if (int(tid) < C) {
  Gs[tid] = gsum;
  Gc[cid * C + tid] = gsum;
}

// 2. K K^T and Q K^T on the lower-triangle tiles, operands straight from device memory in 16-byte loads
//    (k permuted, tiles_cuda.h); both products share the K^T operand.
frag_c kk[LPS];
frag_c qk[LPS];
UNROLL for (int i = 0; i < LPS; ++i) {
  for (int e = 0; e < 4; ++e) kk[i].x[e] = qk[i].x[e] = 0.0f;
  const int f = int(sg) + i * NSG;
  if (f < NLOW) {
    int p = 0;
    while ((p + 1) * (p + 2) <= f) ++p;
    const int ct = f - p * (p + 1);
    const int64_t ra = (int64_t)(t0 + 16 * p) * Hk * Dk;
    const int64_t rb = (int64_t)(t0 + 8 * ct) * Hk * Dk;
    UNROLL for (int gi = 0; gi < Dk / (8 * KGI); ++gi) {
      frag_a ak[KGI], aq[KGI];
      frag_b bk[KGI];
      load_a<KGI>(ak, kb + ra + 8 * KGI * gi, Hk * Dk, n_tok - t0 - 16 * p, lane);
      load_a<KGI>(aq, qb + ra + 8 * KGI * gi, Hk * Dk, n_tok - t0 - 16 * p, lane);
      load_bt<KGI>(bk, kb + rb + 8 * KGI * gi, Hk * Dk, n_tok - t0 - 8 * ct, lane);
      UNROLL for (int j = 0; j < KGI; ++j) {
        mma<PREC>(kk[i], ak[j], bk[j]);
        mma<PREC>(qk[i], aq[j], bk[j]);
      }
    }
  }
}
BARRIER();
// A_ij = -beta_i e^(G_i - G_j) k_i.k_j below the diagonal, 0 on and above it (within the computed tiles)
UNROLL for (int i = 0; i < LPS; ++i) {
  const int f = int(sg) + i * NSG;
  if (f < NLOW) {
    int p = 0;
    while ((p + 1) * (p + 2) <= f) ++p;
    const int ct = f - p * (p + 1);
    UNROLL for (int e = 0; e < 4; ++e) {
      const int r = 16 * p + fc_row(lane, e);
      const int c = 8 * ct + fc_col(lane, e);
      M[r * LD + c] = r > c ? -Bs[r] * fexp(Gs[r] - Gs[c]) * kk[i].x[e] : 0.0f;
    }
  }
}
BARRIER();

// 3. T = (I - A)^-1 by forward substitution, one column per thread; then M = T diag(beta).
//    Column col of T is zero above the diagonal, so M ends up zero there too.
float x[C];
const int col = int(tid);
if (col < C) {
  UNROLL for (int i = 0; i < C; ++i) {
    float s = i == col ? 1.0f : 0.0f;
    UNROLL for (int j = 0; j < i; ++j) s += M[i * LD + j] * x[j];
    x[i] = s;
  }
}
BARRIER();
if (col < C) {
  const float bc = Bs[col];
  UNROLL for (int i = 0; i < C; ++i) M[i * LD + col] = opnd<PREC>(x[i] * bc);  // step 4's operand
}
BARRIER();

// 4. [U | W] = T diag(beta) [V | e^G K] over column slices of [v | k] staged in X. Each simdgroup takes
//    one 8-column tile and all row pairs; T is lower triangular, so k-steps stop at the diagonal.
//    The next slice is loaded (raw words, portable_cuda.h) while this one is multiplied.
constexpr int SPT = (C * (VS / VW) + NT - 1) / NT;   // 16-byte loads per thread per slice
uint xw[SPT][4];
for (int s = -VS; s < NCOL; s += VS) {                // stores slice s, loads slice s + VS, multiplies slice s
  if (s >= 0) {
    UNROLL for (int r = 0; r < SPT; ++r) {
      const int e = int(tid) + r * NT;
      if (e < C * (VS / VW)) {
        const int j = e / (VS / VW);
        const int c0 = (e % (VS / VW)) * VW;
        float val[VW];
        runpack<VW, InT>(val, xw[r]);
        const float eg = s + c0 < Dv ? 1.0f : fexp(Gs[j]);
        for (int i = 0; i < VW; ++i) X[j * LDV + c0 + i] = opnd<PREC>(val[i] * eg);
      }
    }
    BARRIER();
  }
  UNROLL for (int r = 0; r < SPT; ++r) {
    const int e = int(tid) + r * NT;
    const int j = e / (VS / VW);
    const int gc = s + VS + (e % (VS / VW)) * VW;
    const int t = t0 + j;
    if (e < C * (VS / VW) && t < n_tok && gc < Dv) {
      rload<VW>(xw[r], vb + (int64_t)t * Hv * Dv + gc);
    } else if (e < C * (VS / VW) && t < n_tok && gc < NCOL) {
      rload<VW>(xw[r], kb + (int64_t)t * Hk * Dk + gc - Dv);
    } else {
      for (int i = 0; i < 4; ++i) xw[r][i] = 0u;
    }
  }
  if (s < 0) continue;
  for (int f = int(sg); f < (VS / 8) * RP; f += NSG) {
    const int cl = f % (VS / 8);
    const int p = f / (VS / 8);
    const int gc0 = s + 8 * cl;
    if (gc0 < NCOL) {
      frag_c acc;
      for (int e = 0; e < 4; ++e) acc.x[e] = 0.0f;
      UNROLL for (int ks = 0; ks < C / 8; ++ks) {
        if (ks <= 2 * p + 1) {
          frag_a a;
          frag_b bm;
          UNROLL for (int e = 0; e < 4; ++e) a.x[e] = M[(16 * p + fa_row(lane, e)) * LD + 8 * ks + fa_col(lane, e)];
          UNROLL for (int e = 0; e < 2; ++e) bm.x[e] = X[(8 * ks + fb_row(lane, e)) * LDV + 8 * cl + fb_col(lane, e)];
          mma<MP>(acc, a, bm);
        }
      }
      UNROLL for (int hh = 0; hh < 2; ++hh) {
        const int r = 16 * p + fc_row(lane, 2 * hh);
        const int gc = gc0 + fc_col(lane, 2 * hh);
        device float* o = gc0 < Dv ? U + (cid * C + r) * Dv + gc : W + (cid * C + r) * Dk + gc - Dv;
        vstore2(o, acc.x[2 * hh], acc.x[2 * hh + 1]);
      }
    }
  }
  BARRIER();
}

// 5. Aqk = Q K^T e^(G_i - G_j) on and below the diagonal into M (zero above, from step 3), then out.
UNROLL for (int i = 0; i < LPS; ++i) {
  const int f = int(sg) + i * NSG;
  if (f < NLOW) {
    int p = 0;
    while ((p + 1) * (p + 2) <= f) ++p;
    const int ct = f - p * (p + 1);
    UNROLL for (int e = 0; e < 4; ++e) {
      const int r = 16 * p + fc_row(lane, e);
      const int c = 8 * ct + fc_col(lane, e);
      M[r * LD + c] = r >= c ? qk[i].x[e] * fexp(Gs[r] - Gs[c]) : 0.0f;
    }
  }
}
BARRIER();
for (int e = int(tid); e < C * C; e += NT) {
  Aqk[cid * C * C + e] = M[(e / C) * LD + e % C];
}

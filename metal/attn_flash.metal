// attn_flash: softmax attention in one pass over the keys, keeping a running row max and sum (flash attention),
// so the [T, S] scores never leave the chip. Reference: the MLX-ops path of Attention.attend.
// q [B, Hq, T, D]; k, v [B, Hkv, S, D] (query head h reads key head h / (Hq / Hkv)); out [B, T, Hq, D], the
// layout o_proj reads. CAUSAL: query i sits at position S - T + i and sees keys 0 .. S - T + i (a chunk of
// queries at the end of the cache); otherwise every key. InT is 16-bit (bfloat16, half).
// Grid (NT * ceil(T / BQ), Hq, B), threadgroup NT = 32 NW: one threadgroup per block of BQ = 16 NW queries of
// one head, one simdgroup per 16 of them, heaviest blocks first. Keys go in blocks of BK through threadgroup
// memory; scores, max and sums are float32 (scaled to base 2), probabilities are operands in InT (CUDA).
// Copies overlap compute (cp.async on CUDA): V's with Q K^T, the next K's with the softmax and P V.
// QS: the queries wait in threadgroup memory, a 16 x 16 piece loaded per k-step, rather than in registers
// (D / 4 words per lane there): more room for loads in flight beside the D / 2 floats of output per lane. Needs
// BQ rows more threadgroup memory (CUDA: dynamic shared memory past the static 48 KiB).
constexpr int NW = NT / 32;
constexpr int BQ = 16 * NW;
constexpr int LD = D + 8;                       // row stride in threadgroup memory: 8x8 loads hit distinct banks
constexpr int VW = 16 / int(sizeof(InT));       // elements per 16-byte copy
constexpr int CPR = D / VW;                     // copies per row
constexpr int CPT = (BK * CPR + NT - 1) / NT;   // copies per thread per block of K (or V)
constexpr int NB = BK / 8;                      // 8-key score tiles per block
const int T = meta[0];
const int S = meta[1];
const float scale = bits_float(SCALE) * 1.4426950408889634f;   // softmax in base 2
const int h = int(tgid.y);
const int b = int(tgid.z);
const int hk = h / (Hq / Hkv);
const int q0 = ((T + BQ - 1) / BQ - 1 - int(tgid.x)) * BQ;   // heaviest (causal) first
const int r0 = q0 + 16 * int(sg);               // this simdgroup's first query
const int last = CAUSAL ? S - T + r0 + 15 : S - 1;   // the last key any of its queries sees
const int kend = CAUSAL ? min(S, S - T + q0 + BQ) : S;
const device InT* kp = k + ((int64_t)b * Hkv + hk) * S * D;
const device InT* vp = v + ((int64_t)b * Hkv + hk) * S * D;
const device InT* qp = q + ((int64_t)b * Hq + h) * T * D;
TG_ARRAYS_BEGIN
TG_ARRAY(InT, Qs, QS ? BQ * LD : 8)
TG_ARRAY(InT, Ks, BK * LD)
TG_ARRAY(InT, Vs, BK * LD)

frag_a16 qa[QS ? 1 : D / 16];
if (QS) {                                       // rows past T repeat row T - 1 (their outputs are not written)
  UNROLL for (int i = 0; i < (BQ * CPR + NT - 1) / NT; ++i) {
    const int e = int(tid) + i * NT;
    const int r = e / CPR;
    const int c = (e % CPR) * VW;
    if (e < BQ * CPR) copy16_async<InT>(Qs + r * LD + c, qp + (int64_t)(q0 + r < T ? q0 + r : T - 1) * D + c);
  }                                             // committed with K's first block below
} else {
  UNROLL for (int ks = 0; ks < D / 16; ++ks) load_a16<InT>(qa[QS ? 0 : ks], qp + (int64_t)r0 * D + 16 * ks, D, T - r0, lane);
}
frag_c o[D / 8];
UNROLL for (int n = 0; n < D / 8; ++n) {
  for (int e = 0; e < 4; ++e) o[n].x[e] = 0.0f;
}
float m[2] = {-INFINITY, -INFINITY};            // running max of the lane's two rows (fc_row e = 0, 2)
float l[2] = {0.0f, 0.0f};                      // running sum over the lane's own columns; summed at the end

// Block kb of K (or V) into threadgroup memory; rows past S repeat row S - 1: their scores are masked and
// their probabilities 0, so finite values suffice.
#define STAGE(dst, src, kb)                                                              \
  UNROLL for (int i = 0; i < CPT; ++i) {                                                 \
    const int e = int(tid) + i * NT;                                                     \
    const int r = e / CPR;                                                               \
    const int c = (e % CPR) * VW;                                                        \
    if (e < BK * CPR) copy16_async<InT>(dst + r * LD + c, src + (int64_t)(kb + r < S ? kb + r : S - 1) * D + c); \
  }                                                                                      \
  copy_commit();

STAGE(Ks, kp, 0)
for (int kb = 0; kb < kend; kb += BK) {
  BARRIER();                                    // the last block's P V is done with Vs
  STAGE(Vs, vp, kb)
  copy_wait<1>();                               // this block's K, and Q first (all but the V copies just issued)
  BARRIER();
  const bool active = kb <= last;
  frag_c s[NB];
  if (active) {
    UNROLL for (int n = 0; n < NB; ++n) {
      for (int e = 0; e < 4; ++e) s[n].x[e] = 0.0f;
    }
    UNROLL for (int ks = 0; ks < D / 16; ++ks) {
      const int qi = QS ? 0 : ks;
      if (QS) load_a16s<InT>(qa[0], Qs + 16 * int(sg) * LD + 16 * ks, LD, lane);
      UNROLL for (int n2 = 0; n2 < NB / 2; ++n2) {
        frag_b16 kt[2];
        load_bt16x2<InT>(kt, Ks + 16 * n2 * LD + 16 * ks, LD, lane);
        mma16<InT>(s[2 * n2], qa[qi], kt[0]);
        mma16<InT>(s[2 * n2 + 1], qa[qi], kt[1]);
      }
    }
  }
  BARRIER();                                    // everyone is done with Ks
  if (kb + BK < kend) {
    STAGE(Ks, kp, kb + BK)
  } else {
    copy_commit();                              // an empty group keeps copy_wait's count the same
  }
  if (active) {
    // Scale and mask; the running max moves to this block's, the old sums and outputs shrink by alpha.
    const bool edge = kb + BK > S || (CAUSAL && kb + BK - 1 > S - T + r0);
    float mb[2] = {m[0], m[1]};
    UNROLL for (int n = 0; n < NB; ++n) {
      UNROLL for (int e = 0; e < 4; ++e) {
        float x = s[n].x[e] * scale;
        if (edge) {
          const int key = kb + 8 * n + fc_col(lane, e);
          const int qi = r0 + fc_row(lane, e);
          if (key >= S || (CAUSAL && key > S - T + qi)) x = -INFINITY;
        }
        s[n].x[e] = x;
        mb[e >> 1] = x > mb[e >> 1] ? x : mb[e >> 1];
      }
    }
    float alpha[2];
    UNROLL for (int hh = 0; hh < 2; ++hh) {
      mb[hh] = row_max(mb[hh]);
      alpha[hh] = mb[hh] == -INFINITY ? 1.0f : fexp2(m[hh] - mb[hh]);   // a row with no key yet keeps 0s
      m[hh] = mb[hh];
      if (mb[hh] == -INFINITY) mb[hh] = 0.0f;
      l[hh] *= alpha[hh];
    }
    UNROLL for (int n = 0; n < NB; ++n) {
      UNROLL for (int e = 0; e < 4; ++e) {
        const float p = fexp2(s[n].x[e] - mb[e >> 1]);
        s[n].x[e] = p;
        l[e >> 1] += p;
      }
    }
    UNROLL for (int n = 0; n < D / 8; ++n) {
      UNROLL for (int e = 0; e < 4; ++e) o[n].x[e] *= alpha[e >> 1];
    }
  }
  copy_wait<1>();                               // this block's V (all but the next K)
  BARRIER();
  if (active) {
    UNROLL for (int kk = 0; kk < BK / 16; ++kk) {
      frag_a16 pa;
      c_to_a16<InT>(pa, s[2 * kk], s[2 * kk + 1]);
      UNROLL for (int n2 = 0; n2 < D / 16; ++n2) {
        frag_b16 vb[2];
        load_b16x2<InT>(vb, Vs + 16 * kk * LD + 16 * n2, LD, lane);
        mma16<InT>(o[2 * n2], pa, vb[0]);
        mma16<InT>(o[2 * n2 + 1], pa, vb[1]);
      }
    }
  }
}
#undef STAGE

float inv[2];
UNROLL for (int hh = 0; hh < 2; ++hh) {
  const float sum = row_sum(l[hh]);
  inv[hh] = sum > 0.0f ? 1.0f / sum : 0.0f;
}
UNROLL for (int n = 0; n < D / 8; ++n) {
  UNROLL for (int e = 0; e < 4; ++e) {
    const int qi = r0 + fc_row(lane, e);
    if (qi < T) {
      out[(((int64_t)b * T + qi) * Hq + h) * D + 8 * n + fc_col(lane, e)] = static_cast<InT>(o[n].x[e] * inv[e >> 1]);
    }
  }
}

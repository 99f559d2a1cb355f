// gdn_chunk_scan: the sequential half of the chunk-wise gated delta rule, with the outputs fused in.
// Reference: gdn_chunked in qwen35_mlx/kernels/gdn.py; W, U, Aqk, Gc come from gdn_chunk_prep.
// Grid (NT * Dv / BV, Hv, B), threadgroup (NT, 1, 1): one threadgroup per (slice of BV value rows, value head,
// batch). Value rows of the state are independent, so each threadgroup walks all chunks with its [Dk, BV]
// slice h (= state^T) on chip. Per chunk of C steps (G: cumulative log decay from the chunk start):
//   A:  u = U - W h  -> uS          qh = q h  (kept in registers)          (C x BV each, over Dk)
//   B:  y = e^G qh + Aqk u          written in InT                          (over the chunk, lower triangle)
//   D:  h = e^G_C h + (e^(G_C - G) K)^T u                                   (Dk x BV, over the chunk)
// Two threadgroup barriers per chunk. h lives in registers (accumulator tiles, rows in row_perm order) and in
// hS (operand tiles, natural order).
// All global operands of a chunk are loaded into registers a chunk ahead, as raw words where they need unpacking
// (tiles_cuda.h, rload): no load waits where it is issued.
constexpr int NSG = NT / 32;
constexpr int LDH = BV + 9;                       // hS row stride (= 1 mod 8): phase-A operand reads hit 32 banks
constexpr int LDU = (BV / 8) % 2 ? BV : BV + 8;   // uS row stride: phase-D operand reads avoid bank conflicts
constexpr int RPC = C / 16;                       // 16-row pairs of a chunk
constexpr int KSC = C / 8;                        // k-steps over a chunk
constexpr int KSK = Dk / 8;                       // k-steps over the keys
constexpr int CTV = BV / 8;                       // 8-column tiles of the slice
constexpr int RPH = Dk / 16;                      // 16-row pairs of the state slice
constexpr int APW = (2 * RPC + NSG - 1) / NSG;    // phase-A tasks (u row pairs, then q h row pairs) per simdgroup
constexpr int HPW = (RPH + NSG - 1) / NSG;        // state row pairs per simdgroup
constexpr int KGA = 4;                            // k-steps per wide load: phase A (W, q) ...
constexpr int KGB = 2;                            // ... and phase B (Aqk)
constexpr int WK = 2 * int(sizeof(InT)) / 4;      // words of a key pair (phase D operand)
constexpr int MP = PREC == 0 ? 2 : PREC;          // operands are made with opnd<PREC> (tiles_cuda.h), then taken as they are
const int n_tok = meta[0];
const int N = meta[1];
const int v0 = int(tgid.x) * BV;
const int hv = int(tgid.y);
const int b = int(tgid.z);
const int hk = hv / (Hv / Hk);
const device InT* qb = q + (int64_t)b * n_tok * Hk * Dk + hk * Dk;   // step t at [t * Hk * Dk]
const device InT* kb = k + (int64_t)b * n_tok * Hk * Dk + hk * Dk;
device InT* yb = y + (int64_t)b * n_tok * Hv * Dv + hv * Dv + v0;      // step t at [t * Hv * Dv]
const int64_t s0 = ((int64_t)b * Hv + hv) * Dv * Dk;                   // this head's [Dv, Dk] state
threadgroup float hS[Dk * LDH];
threadgroup float uS[C * LDU];
threadgroup float eG[C];     // e^G_i
threadgroup float eR[C];     // e^(G_C - G_i)

frag_c h[HPW][CTV];
UNROLL for (int i = 0; i < HPW; ++i) {
  const int p = int(sg) + i * NSG;
  if (p < RPH) {
    UNROLL for (int ct = 0; ct < CTV; ++ct) {
      UNROLL for (int e = 0; e < 4; ++e) {
        const int d = 16 * p + row_perm(fc_row(lane, e));
        const int c = 8 * ct + fc_col(lane, e);
        h[i][ct].x[e] = state_in[s0 + (int64_t)(v0 + c) * Dk + d];
        hS[d * LDH + c] = opnd<PREC>(h[i][ct].x[e]);
      }
    }
  }
}
BARRIER();

// Software pipeline: each operand of chunk n + 1 is loaded as soon as the same operand of chunk n has been
// used, so its memory latency overlaps the rest of chunk n (iteration n = -1 only loads chunk 0).
frag_c acc[APW][CTV];
uint rA[APW][KSK / KGA][2][2 * KGA];  // phase-A operand rows as words: W (u tasks, float) or q (q h tasks, InT)
frag_a aB[APW][KSC];                  // phase-B operand rows: Aqk
uint rD[HPW][KSC][2][WK];             // phase-D operand K^T as words (scaled by e^(G_C - G) when used)
float un[APW][CTV][4];
float gT = 0.0f, gC = 0.0f;           // G at this thread's step and at the chunk's last step
for (int n = -1; n < N; ++n) {
  const int nl = n + 1;                              // the chunk whose operands are loaded in this iteration
  const int64_t cid = ((int64_t)b * Hv + hv) * N + n;
  const int64_t cidl = cid + 1;
  const int t0 = n * C;
  const int tl = nl * C;
  // this chunk's decays from G loaded an iteration ago, used up before the next chunk's G is loaded (a value
  // still live across that load would be copied at the loop's end, and the copy waits for the load)
  const float dC = fexp(gC);
  if (n >= 0 && int(tid) < C) {
    eG[tid] = fexp(gT);
    eR[tid] = fexp(gC - gT);
  }
  if (nl < N) {
    if (int(tid) < C) gT = Gc[cidl * C + tid];
    gC = Gc[cidl * C + C - 1];
  }

  // A: u = U - W h (row pairs f < RPC) and q h (row pairs f - RPC), over the keys.
  UNROLL for (int i = 0; i < APW; ++i) {
    const int f = int(sg) + i * NSG;
    if (n >= 0 && f < 2 * RPC) {
      UNROLL for (int ct = 0; ct < CTV; ++ct) {
        UNROLL for (int e = 0; e < 4; ++e) acc[i][ct].x[e] = 0.0f;
      }
      UNROLL for (int gi = 0; gi < KSK / KGA; ++gi) {
        frag_a a[KGA];
        if (f < RPC) {
          unpack_a<KGA, float>(a, rA[i][gi]);
        } else {
          unpack_a<KGA, InT>(a, rA[i][gi]);
        }
        UNROLL for (int j = 0; j < KGA; ++j) {
          UNROLL for (int e = 0; e < 4; ++e) a[j].x[e] = opnd<PREC>(a[j].x[e]);
        }
        UNROLL for (int j = 0; j < KGA; ++j) {
          UNROLL for (int ct = 0; ct < CTV; ++ct) {
            frag_b bm;
            UNROLL for (int e = 0; e < 2; ++e) {
              bm.x[e] = hS[(8 * KGA * gi + kp_row<KGA>(lane, j, e)) * LDH + 8 * ct + fb_col(lane, e)];
            }
            mma<MP>(acc[i][ct], a[j], bm);
          }
        }
      }
      if (f < RPC) {
        UNROLL for (int ct = 0; ct < CTV; ++ct) {
          UNROLL for (int e = 0; e < 4; ++e) {
            uS[(16 * f + fc_row(lane, e)) * LDU + 8 * ct + fc_col(lane, e)] = opnd<PREC>(un[i][ct][e] - acc[i][ct].x[e]);
          }
        }
      }
    }
    // next chunk's phase-A operands: W or q rows in 16-byte (or wider) loads, k permuted (tiles_cuda.h)
    if (nl < N && f < RPC) {
      UNROLL for (int gi = 0; gi < KSK / KGA; ++gi) {
        load_a_raw<KGA>(rA[i][gi], W + (cidl * C + 16 * f) * Dk + 8 * KGA * gi, Dk, 16, lane);
      }
      UNROLL for (int ct = 0; ct < CTV; ++ct) {
        UNROLL for (int hh = 0; hh < 2; ++hh) {
          vload<2>(&un[i][ct][2 * hh],
                   U + (cidl * C + 16 * f + fc_row(lane, 2 * hh)) * Dv + v0 + 8 * ct + fc_col(lane, 2 * hh));
        }
      }
    } else if (nl < N && f < 2 * RPC) {
      UNROLL for (int gi = 0; gi < KSK / KGA; ++gi) {
        load_a_raw<KGA>(rA[i][gi], qb + (int64_t)(tl + 16 * (f - RPC)) * Hk * Dk + 8 * KGA * gi, Hk * Dk,
                        n_tok - tl - 16 * (f - RPC), lane);
      }
    }
  }
  if (n >= 0) BARRIER();

  // B: y = e^G q h + Aqk u for the q h row pairs this simdgroup holds.
  UNROLL for (int i = 0; i < APW; ++i) {
    const int f = int(sg) + i * NSG;
    if (f >= RPC && f < 2 * RPC) {
      const int p = f - RPC;
      if (n >= 0) {
        UNROLL for (int ct = 0; ct < CTV; ++ct) {
          UNROLL for (int e = 0; e < 4; ++e) acc[i][ct].x[e] *= eG[16 * p + fc_row(lane, e)];
        }
        UNROLL for (int ks = 0; ks < KSC; ++ks) {
          if (ks <= 2 * p + 1) {
            frag_a a;
            UNROLL for (int e = 0; e < 4; ++e) a.x[e] = opnd<PREC>(aB[i][ks].x[e]);
            UNROLL for (int ct = 0; ct < CTV; ++ct) {
              frag_b bm;
              UNROLL for (int e = 0; e < 2; ++e) {
                bm.x[e] = uS[(8 * KGB * (ks / KGB) + kp_row<KGB>(lane, ks % KGB, e)) * LDU + 8 * ct + fb_col(lane, e)];
              }
              mma<MP>(acc[i][ct], a, bm);
            }
          }
        }
        UNROLL for (int ct = 0; ct < CTV; ++ct) {
          UNROLL for (int e = 0; e < 4; ++e) {
            const int t = t0 + 16 * p + fc_row(lane, e);
            if (t < n_tok) yb[(int64_t)t * Hv * Dv + 8 * ct + fc_col(lane, e)] = static_cast<InT>(acc[i][ct].x[e]);
          }
        }
      }
      if (nl < N) {  // next chunk's Aqk rows (lower triangle only)
        UNROLL for (int gi = 0; gi < KSC / KGB; ++gi) {
          if (gi * KGB <= 2 * p + 1) load_a<KGB>(&aB[i][gi * KGB], Aqk + (cidl * C + 16 * p) * C + 8 * KGB * gi, C, 16, lane);
        }
      }
    }
  }

  // D: h = e^G_C h + (e^(G_C - G) K)^T u. Nobody reads hS until the next barrier, so tiles refresh in place.
  UNROLL for (int i = 0; i < HPW; ++i) {
    const int p = int(sg) + i * NSG;
    if (p < RPH) {
      if (n >= 0) {
        UNROLL for (int ct = 0; ct < CTV; ++ct) {
          UNROLL for (int e = 0; e < 4; ++e) h[i][ct].x[e] *= dC;
        }
        UNROLL for (int ks = 0; ks < KSC; ++ks) {
          frag_a a;
          UNROLL for (int sl = 0; sl < 2; ++sl) {
            float kv[2];
            runpack<2, InT>(kv, rD[i][ks][sl]);
            a.x[fa_e(0, sl)] = kv[0];
            a.x[fa_e(1, sl)] = kv[1];
          }
          UNROLL for (int e = 0; e < 4; ++e) a.x[e] = opnd<PREC>(a.x[e] * eR[8 * ks + fa_col(lane, e)]);
          UNROLL for (int ct = 0; ct < CTV; ++ct) {
            frag_b bm;
            UNROLL for (int e = 0; e < 2; ++e) bm.x[e] = uS[(8 * ks + fb_row(lane, e)) * LDU + 8 * ct + fb_col(lane, e)];
            mma<MP>(h[i][ct], a, bm);
          }
        }
        UNROLL for (int ct = 0; ct < CTV; ++ct) {
          UNROLL for (int e = 0; e < 4; ++e) {
            hS[(16 * p + row_perm(fc_row(lane, e))) * LDH + 8 * ct + fc_col(lane, e)] = opnd<PREC>(h[i][ct].x[e]);
          }
        }
      }
      if (nl < N) {  // next chunk's K^T: rows r, r + 8 of the tile are keys 2r, 2r + 1, one load for both
        UNROLL for (int ks = 0; ks < KSC; ++ks) {
          UNROLL for (int sl = 0; sl < 2; ++sl) {
            const int t = tl + 8 * ks + fa_col(lane, fa_e(0, sl));
            if (t < n_tok) {
              rload<2>(rD[i][ks][sl], kb + (int64_t)t * Hk * Dk + 16 * p + 2 * fa_r(lane, 0));
            } else {
              UNROLL for (int w = 0; w < WK; ++w) rD[i][ks][sl][w] = 0u;
            }
          }
        }
      }
    }
  }
  if (n >= 0) BARRIER();
}

UNROLL for (int i = 0; i < HPW; ++i) {
  const int p = int(sg) + i * NSG;
  if (p < RPH) {
    UNROLL for (int ct = 0; ct < CTV; ++ct) {
      UNROLL for (int e = 0; e < 4; ++e) {
        state_out[s0 + (int64_t)(v0 + 8 * ct + fc_col(lane, e)) * Dk + 16 * p + row_perm(fc_row(lane, e))] = h[i][ct].x[e];
      }
    }
  }
}

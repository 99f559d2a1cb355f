// gdn_conv: a GDN mixer's work between its input projections and the scan, for a run of T tokens (prefill):
// the causal depthwise conv over [history; qkv] with SiLU, L2-normed q (scaled by Dk^-1/2) and k, v, the decay
// and beta gates (float32), and the conv history the run leaves behind. In MLX ops that is ~10 launches and as
// many passes over qkv; here one pass, in float32 and rounded once.
// Reference: the MLX-ops branch of GatedDeltaNet.mix (qwen35_mlx/model/gated_deltanet.py).
// Grid (32 SPT * ceil(T / TPG), ceil((2 Hk + Hv) / SPT), B), threadgroup (32 SPT, 1, 1): one simdgroup per
// (run of TPG tokens, head slot), SPT slots per threadgroup (a GPU holds only so many threadgroups at once);
// slots 0 .. Hk-1 are the q heads, then the k heads, then the value heads (which also make the gates).
// A lane holds groups of 4 consecutive channels of its head (4 lane, 4 (lane + 32), ...) with their K taps, and
// the last K rows of [history; qkv] it read: each row is read once per slot, plus K - 1 rows before the run.
// The next token's row is loaded (as raw words) while this one's is computed, so its latency is hidden.
constexpr int KEY_DIM = Hk * Dk;
constexpr int CD = 2 * KEY_DIM + Hv * Dv;
constexpr int GPL = ((Dk > Dv ? Dk : Dv) / 4 + 31) / 32;   // channel groups per lane
const int n_tok = meta[0];
const int slot = int(tgid.y) * SPT + int(sg);
if (slot >= 2 * Hk + Hv) return;              // no barriers below: a spare simdgroup may leave
const int b = int(tgid.z);
const int t0 = int(tgid.x) * TPG;
const bool is_v = slot >= 2 * Hk;
const int hv = slot - 2 * Hk;
const int D = is_v ? Dv : Dk;
const int c0 = is_v ? 2 * KEY_DIM + hv * Dv : slot * Dk;
const device InT* xb = qkv + (int64_t)b * n_tok * CD;
const device InT* hb = conv_in + (int64_t)b * (K - 1) * CD;

float w[GPL][4][K];
float r[K][GPL][4];   // r[j]: row t + j of [history; qkv] while token t is made
UNROLL for (int j = 0; j < GPL; ++j) {
  const int ch = 4 * (int(lane) + 32 * j);
  UNROLL for (int e = 0; e < 4; ++e) {
    UNROLL for (int tap = 0; tap < K; ++tap) w[j][e][tap] = ch < D ? float(conv_w[(c0 + ch + e) * K + tap]) : 0.0f;
  }
}
// Row i of [history; qkv] into r[slot_], this lane's channels (history rows i < K - 1, then qkv row i - K + 1).
#define GDN_CONV_ROW(slot_, i)                                                                  \
  UNROLL for (int j = 0; j < GPL; ++j) {                                                        \
    const int ch = 4 * (int(lane) + 32 * j);                                                    \
    if (ch < D) {                                                                               \
      vload<4>(r[slot_][j], (i) < K - 1 ? hb + (i) * CD + c0 + ch : xb + int64_t((i) - (K - 1)) * CD + c0 + ch); \
    } else {                                                                                    \
      UNROLL for (int e = 0; e < 4; ++e) r[slot_][j][e] = 0.0f;                                 \
    }                                                                                           \
  }
UNROLL for (int s = 1; s < K; ++s) {
  GDN_CONV_ROW(s, t0 + s - 1)
}
constexpr int WPG = 4 * int(sizeof(InT)) / 4;   // words of a group of 4 channels
uint nx[GPL][WPG];                              // row t + K - 1 of the next token t, as loaded
// Raw words of row i of [history; qkv], this lane's channels (zeros past the head or past the run).
#define GDN_CONV_FETCH(i, ok)                                                                   \
  UNROLL for (int j = 0; j < GPL; ++j) {                                                        \
    const int ch = 4 * (int(lane) + 32 * j);                                                    \
    if (ch < D && (ok)) {                                                                       \
      rload<4>(nx[j], (i) < K - 1 ? hb + (i) * CD + c0 + ch : xb + int64_t((i) - (K - 1)) * CD + c0 + ch); \
    } else {                                                                                    \
      UNROLL for (int e = 0; e < WPG; ++e) nx[j][e] = 0u;                                       \
    }                                                                                           \
  }

const float a_log = is_v ? fexp(float(A_log[hv])) : 0.0f;
const float dtb = is_v ? float(dt_bias[hv]) : 0.0f;
const float out_scale = slot < Hk ? frsqrt(float(Dk)) : 1.0f;
const int t_end = t0 + TPG < n_tok ? t0 + TPG : n_tok;
GDN_CONV_FETCH(t0 + K - 1, t0 < t_end)
for (int t = t0; t < t_end; ++t) {
  UNROLL for (int s = 0; s < K - 1; ++s) {
    UNROLL for (int j = 0; j < GPL; ++j) {
      UNROLL for (int e = 0; e < 4; ++e) r[s][j][e] = r[s + 1][j][e];
    }
  }
  UNROLL for (int j = 0; j < GPL; ++j) runpack<4, InT>(r[K - 1][j], nx[j]);
  GDN_CONV_FETCH(t + K, t + 1 < t_end)
  float act[GPL][4];
  float ss = 0.0f;
  UNROLL for (int j = 0; j < GPL; ++j) {
    UNROLL for (int e = 0; e < 4; ++e) {
      float acc = 0.0f;
      UNROLL for (int tap = 0; tap < K; ++tap) acc += w[j][e][tap] * r[tap][j][e];
      act[j][e] = acc / (1.0f + fexp(-acc));
      ss += act[j][e] * act[j][e];
    }
  }
  const int64_t bt = (int64_t)b * n_tok + t;
  if (is_v) {
    UNROLL for (int j = 0; j < GPL; ++j) {
      const int ch = 4 * (int(lane) + 32 * j);
      if (ch < D) vstore<4>(v + (bt * Hv + hv) * Dv + ch, act[j]);
    }
    if (lane == 0) {
      const float xa = float(a_in[bt * Hv + hv]) + dtb;
      const float softplus = (xa > 0.0f ? xa : 0.0f) + flog(1.0f + fexp(xa > 0.0f ? -xa : xa));  // logaddexp(x, 0)
      g[bt * Hv + hv] = -a_log * softplus;
      beta[bt * Hv + hv] = 1.0f / (1.0f + fexp(-float(b_in[bt * Hv + hv])));
    }
  } else {
    UNROLL for (int m = 16; m >= 1; m >>= 1) ss += shfl_xor(ss, m);
    const float scale = frsqrt(ss + 1e-6f) * out_scale;
    device InT* out = slot < Hk ? q + (bt * Hk + slot) * Dk : k + (bt * Hk + slot - Hk) * Dk;
    UNROLL for (int j = 0; j < GPL; ++j) {
      const int ch = 4 * (int(lane) + 32 * j);
      if (ch < D) {
        UNROLL for (int e = 0; e < 4; ++e) act[j][e] *= scale;
        vstore<4>(out + ch, act[j]);
      }
    }
  }
}

// The history the run leaves: rows T .. T + K - 2 of [history; qkv], written by the run holding the last token.
if (t_end == n_tok) {
  device InT* ho = conv_out + (int64_t)b * (K - 1) * CD;
  UNROLL for (int s = 0; s < K - 1; ++s) {
    const int i = n_tok + s;
    UNROLL for (int j = 0; j < GPL; ++j) {
      const int ch = 4 * (int(lane) + 32 * j);
      if (ch < D) {
        UNROLL for (int e = 0; e < 4; ++e) {
          ho[s * CD + c0 + ch + e] = i < K - 1 ? hb[i * CD + c0 + ch + e] : xb[int64_t(i - (K - 1)) * CD + c0 + ch + e];
        }
      }
    }
  }
}
#undef GDN_CONV_FETCH

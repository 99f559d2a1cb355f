// gdn_step: the gated delta rule token by token, for decode (T = 1) and short speculative runs.
// Reference: gdn_reference in qwen35_mlx/kernels/gdn.py. Grid (NT * ceil(Dv / R), Hv, B), threadgroup
// (NT, 1, 1) with R = NT / L value rows per threadgroup: L neighbouring lanes share one row of the state,
// each holding Dk / L consecutive keys in registers, so the state is read and written once per call.
// With SAVE, the state after every step goes to `states` [B, T, Hv, Dv, Dk] (rollback after verification).
constexpr int EPL = Dk / L;
constexpr int R = NT / L;
const int n_tok = meta[0];
const int hv = int(tgid.y);
const int b = int(tgid.z);
const int hk = hv / (Hv / Hk);
const int dv = int(tgid.x) * R + int(tid) / L;
const int li = int(tid) % L;
const bool row = dv < Dv;
const int64_t so = (((int64_t)b * Hv + hv) * Dv + (row ? dv : 0)) * Dk + li * EPL;
float s[EPL];
UNROLL for (int e = 0; e < EPL; ++e) s[e] = row ? state_in[so + e] : 0.0f;

for (int t = 0; t < n_tok; ++t) {
  const int64_t go = ((int64_t)b * n_tok + t) * Hv + hv;                  // [B, T, Hv]
  const int64_t ko = (((int64_t)b * n_tok + t) * Hk + hk) * Dk + li * EPL;  // [B, T, Hk, Dk]
  const float decay = fexp(g[go]);
  const float bt = beta[go];
  float kv = 0.0f;
  UNROLL for (int e = 0; e < EPL; ++e) {
    s[e] *= decay;
    kv += s[e] * float(k[ko + e]);
  }
  UNROLL for (int m = 1; m < L; m <<= 1) kv += shfl_xor(kv, m);
  const float delta = ((row ? float(v[go * Dv + dv]) : 0.0f) - kv) * bt;
  float o = 0.0f;
  UNROLL for (int e = 0; e < EPL; ++e) {
    s[e] += float(k[ko + e]) * delta;
    o += s[e] * float(q[ko + e]);
  }
  UNROLL for (int m = 1; m < L; m <<= 1) o += shfl_xor(o, m);
  if (row && li == 0) y[go * Dv + dv] = static_cast<InT>(o);
  if (SAVE && row) {
    UNROLL for (int e = 0; e < EPL; ++e) states[(go * Dv + dv) * Dk + li * EPL + e] = s[e];
  }
}
if (row) {
  UNROLL for (int e = 0; e < EPL; ++e) state_out[so + e] = s[e];
}

// attn_decode_combine: attn_decode's splits merged into the attention output, out [B, Hq * D] (the layout o_proj
// reads at T = 1) = sum_s w_s o_s with w_s = 2^(m_s - M) / sum_s 2^(m_s - M) l_s, M = max_s m_s.
// o [B, Hq, NS, D], m and l [B, Hq, NS] float32 (attn_decode's), meta as attn_decode's ([S, L, SC]: NS =
// ceil(S / L) <= NSMAX). Grid (NT, Hq, B), threadgroup NT: one threadgroup per (b, query head).
const int S = meta[0];
const int L = meta[1];
const int NS = (S + L - 1) / L;
const int h = int(tgid.y);
const int b = int(tgid.z);
const int64_t r = ((int64_t)b * Hq + h) * NS;
threadgroup float W[NSMAX];
threadgroup float red[2];

if (sg == 0) {
  float top = -INFINITY;
  for (int s = int(lane); s < NS; s += 32) top = m[r + s] > top ? m[r + s] : top;
  for (int k = 16; k > 0; k >>= 1) {
    const float o = shfl_xor(top, k);
    top = o > top ? o : top;
  }
  float den = 0.0f;
  for (int s = int(lane); s < NS; s += 32) {
    W[s] = fexp2(m[r + s] - top);
    den += W[s] * l[r + s];
  }
  for (int k = 16; k > 0; k >>= 1) den += shfl_xor(den, k);
  if (lane == 0) red[0] = 1.0f / den;
}
BARRIER();
const float inv = red[0];
for (int d = int(tid); d < D; d += NT) {
  float acc = 0.0f;
  for (int s = 0; s < NS; ++s) acc += W[s] * o[(r + s) * D + d];
  out[((int64_t)b * Hq + h) * D + d] = static_cast<InT>(acc * inv);
}

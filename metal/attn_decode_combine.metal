// attn_decode_combine: attn_decode's splits merged into the attention output, out [B, Hq * D] (the layout o_proj
// reads at T = 1) = sum_s w_s o_s with w_s = 2^(m_s - M) / sum_s 2^(m_s - M) l_s, M = max_s m_s.
// o [B, Hq, NS, D], m and l [B, Hq, NS] float32 (attn_decode's), n_keys and meta as attn_decode's (n_keys = [S],
// meta = [L, SC, NS]): the first NF = ceil(S / L) splits are merged. Grid (NT * ceil(D / 32), Hq, B), threadgroup
// NT = 32 NW: threadgroup x merges columns [32 x, 32 x + 32) of one (b, query head), a lane per column;
// simdgroup sg takes splits sg, sg + NW, ... (128 bytes of o per split and simdgroup: the many loads of a long
// cache's splits go out in parallel), then the NW partial sums are added.
// GATE: the layer's output gate applied on the way out, out *= sigmoid(gate), gate [B, 1, Hq, D] a strided view
// of the projection row (read in place with its strides: the kernel is built with ensure_row_contiguous off,
// o, m and l are attn_decode's own contiguous outputs). Saves the elementwise launch that would follow.
constexpr int NW = NT / 32;
const int S = n_keys[0];
const int L = meta[0];
const int NS = meta[2];
const int NF = (S + L - 1) / L;
const int h = int(tgid.y);
const int b = int(tgid.z);
const int c = 32 * int(tgid.x) + int(lane);
const int64_t r = ((int64_t)b * Hq + h) * NS;
threadgroup float part[NT];

// Every simdgroup finds M and the denominator itself (NF values each): no barrier before the weighted sum.
float top = -INFINITY;
for (int s = int(lane); s < NF; s += 32) top = m[r + s] > top ? m[r + s] : top;
for (int k = 16; k > 0; k >>= 1) {
  const float o2 = shfl_xor(top, k);
  top = o2 > top ? o2 : top;
}
float den = 0.0f;
for (int s = int(lane); s < NF; s += 32) den += fexp2(m[r + s] - top) * l[r + s];
for (int k = 16; k > 0; k >>= 1) den += shfl_xor(den, k);

float acc = 0.0f;
if (c < D) {
  for (int s = int(sg); s < NF; s += NW) acc += fexp2(m[r + s] - top) * o[(r + s) * D + c];
}
part[tid] = acc;
BARRIER();
if (sg == 0 && c < D) {
  float sum = 0.0f;
  UNROLL for (int w = 0; w < NW; ++w) sum += part[32 * w + int(lane)];
  float y = sum / den;
  if (GATE) {
    const float z = float(gate[(int64_t)b * gate_strides[0] + (int64_t)h * gate_strides[2] +
                               (int64_t)c * gate_strides[3]]);
    y = y / (1.0f + fexp(-z));
  }
  out[((int64_t)b * Hq + h) * D + c] = static_cast<InT>(y);
}

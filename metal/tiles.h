// Tile helpers shared by both backends (address spaces as THR / DEV); after tiles_cuda.h or tiles_metal.h.

// Rows of a 16-row tile in permuted order: a lane's two rows r and r + 8 (halves h = 0, 1) become the
// neighbours 2 r and 2 r + 1, so one load fetches both when the rows are contiguous in memory.
FN int row_perm(int r) { return r < 8 ? 2 * r : 2 * r - 15; }

// Row of the B element e of k-step ks within a permuted group of KG k-steps (add 8 KG x group index).
template <int KG>
FN int kp_row(uint lane, int ks, int e) { return 2 * KG * fb_q(lane, e) + 2 * ks + fb_s(lane, e); }

// A operand rows from row-major memory, KG k-steps: p at (row 0, first column of the group); rows >= nrows
// read as zeros. load_a_raw keeps the words (w[h]: the lane's row h), unpack_a makes the fragments.
template <int KG, typename T>
FN void load_a_raw(THR uint (*w)[2 * KG], const DEV T* p, int ld, int nrows, uint lane) {
  for (int h = 0; h < 2; ++h) {
    if (fa_r(lane, h) < nrows) {
      rload<2 * KG>(w[h], p + fa_r(lane, h) * ld + 2 * KG * fa_q(lane));
    } else {
      for (int i = 0; i < 2 * KG; ++i) w[h][i] = 0u;
    }
  }
}

template <int KG, typename T>
FN void unpack_a(THR frag_a* a, THR const uint (*w)[2 * KG]) {
  for (int h = 0; h < 2; ++h) {
    float v[2 * KG];
    runpack<2 * KG, T>(v, w[h]);
    for (int j = 0; j < KG; ++j) {
      a[j].x[fa_e(h, 0)] = v[2 * j];
      a[j].x[fa_e(h, 1)] = v[2 * j + 1];
    }
  }
}

template <int KG, typename T>
FN void load_a(THR frag_a* a, const DEV T* p, int ld, int nrows, uint lane) {
  uint w[2][2 * KG];
  load_a_raw<KG>(w, p, ld, nrows, lane);
  unpack_a<KG, T>(a, w);
}

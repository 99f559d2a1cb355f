// Tile helpers shared by both backends; after tiles_cuda.h or tiles_metal.h.

// Rows of a 16-row tile in permuted order: a lane's two rows r and r + 8 (halves h = 0, 1) become the
// neighbours 2 r and 2 r + 1, so one load fetches both when the rows are contiguous in memory.
FN int row_perm(int r) { return r < 8 ? 2 * r : 2 * r - 15; }

// Row of the B element e of k-step ks within a permuted group of KG k-steps (add 8 KG x group index).
template <int KG>
FN int kp_row(uint lane, int ks, int e) { return 2 * KG * fb_q(lane, e) + 2 * ks + fb_s(lane, e); }

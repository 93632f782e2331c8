// Shared-memory tile layout and the per-lane addresses of ldmatrix fragment loads, as plain integer
// functions for the device and the host (tests/csrc builds this header with g++ and checks, by
// simulating ldmatrix and mma.sync lane by lane, that every fragment holds the elements the PTX
// layout asks for, that the swizzle is a bijection and that no 8-lane phase hits a bank twice).
//
// A tile holds rows of 16-bit elements in 16-byte chunks (8 elements), C chunks per row (C = 4, 8,
// 16 or 32). Chunk c of row r lives at chunk swizzle(r, c):
//   C >= 8: r * C + (c ^ (r & 7))          (the chunk moves within its own 128-byte line)
//   C == 4: r * 4 + (c ^ ((r >> 1) & 3))   (64-byte rows: two rows share a 128-byte line)
// so the 8 rows x 16 bytes that one ldmatrix phase reads (and the 8 chunks that 8 consecutive
// threads write with cp.async) fall in 8 distinct 16-byte bank groups: no bank conflicts.
//
// ldmatrix .x4 reads four 8x8 matrices; lanes 8i..8i+7 give the row addresses of matrix i and
// the result register i holds matrix i (PTX ISA). Two lane patterns cover every operand here:
//   rows16: row = r0 + (lane & 15), chunk = c0 + (lane >> 4)
//     - mma A (m16 x k16) stored [m][k] (no .trans): r0 = m0, c0 = k0 / 8 → a[0..3]
//     - mma B (k16 x two n8 tiles) stored [k][n] (.trans): r0 = k0, c0 = n0 / 8
//       → {r0, r1} = B of n-tile n0, {r2, r3} = B of n-tile n0 + 8
//   rows8x2: row = r0 + ((lane >> 4) << 3) + (lane & 7), chunk = c0 + ((lane >> 3) & 1)
//     - mma B (two n8 tiles x k16) stored [n][k] (no .trans): r0 = n0, c0 = k0 / 8
//       → {r0, r1} = B of n-tile n0, {r2, r3} = B of n-tile n0 + 8
//     - mma A (m16 x k16) stored [k][m] (.trans): r0 = k0, c0 = m0 / 8 → a[0..3]
#pragma once

#include "philox.cuh"  // PTFT_HD

namespace ptft {

template <int C>
PTFT_HD int swizzle(int r, int c) {
  static_assert(C == 4 || C == 8 || C == 16 || C == 32, "rows of 64, 128, 256 or 512 bytes");
  return C == 4 ? r * 4 + (c ^ ((r >> 1) & 3)) : r * C + (c ^ (r & 7));
}

// Row and chunk that `lane` addresses in an ldmatrix .x4 (see the header comment).
PTFT_HD int lane_row_rows16(int lane) { return lane & 15; }
PTFT_HD int lane_chunk_rows16(int lane) { return lane >> 4; }
PTFT_HD int lane_row_rows8x2(int lane) { return ((lane >> 4) << 3) + (lane & 7); }
PTFT_HD int lane_chunk_rows8x2(int lane) { return (lane >> 3) & 1; }

// Chunk of (r0 + lane row, c0 + lane chunk) from the lane's chunk at (0, 0), for r0 % 8 == 0 and
// even c0: the swizzle only permutes the low bits of the chunk within a 128-byte line, so every
// fragment address of a lane is its base XOR a constant plus a constant — one register per lane
// and tile instead of one per fragment. (tests/csrc checks it against swizzle() for every case.)
template <int C>
PTFT_HD int frag_chunk(int lane_chunk, int r0, int c0) {
  return (lane_chunk ^ (c0 & 7)) + r0 * C + (c0 >> 3) * 8;
}

// ---------------------------------------------------------------------------- attention tiling
// Positions are within one sequence: query i in [0, lq), key j in [0, lk). Causal attention is
// aligned bottom-right: i sees j iff j <= i + (lk - lq), or (prefix LM) j < prefix — the keys
// below the sequence's prefix length are seen by every query (prefix <= 0: none).

// Forward, query block [m0, m0 + block_m): keys [0, end) can be visible to it.
PTFT_HD int attn_fwd_key_end(int m0, int block_m, int lq, int lk, bool causal, int prefix) {
  if (!causal) return lk;
  int end = m0 + block_m + (lk - lq);
  if (end < prefix) end = prefix;
  return end < 0 ? 0 : (end < lk ? end : lk);
}
// Backward, key block [n0, n0 + block_n): query tiles of block_m rows from this first row on can
// see it (a multiple of block_m, or >= lq when none can).
PTFT_HD int attn_bwd_query_begin(int n0, int block_m, int lq, int lk, bool causal, int prefix) {
  if (!causal || n0 < prefix) return 0;
  const int first = n0 - (lk - lq);  // the first query that sees key n0
  return first <= 0 ? 0 : first / block_m * block_m;
}
// Whether every (i, j) of the tile [m0, m0 + bm) x [n0, n0 + bn) is a real, visible pair when
// there is no key padding mask, so that the kernels may skip the per-element masks.
PTFT_HD bool attn_tile_all_visible(int m0, int bm, int n0, int bn, int lq, int lk, bool causal, int prefix) {
  if (m0 + bm > lq || n0 + bn > lk) return false;
  return !causal || n0 + bn - 1 <= m0 + (lk - lq) || n0 + bn <= prefix;
}

}  // namespace ptft

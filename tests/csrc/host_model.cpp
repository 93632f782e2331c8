// The csrc kernels' integer functions (csrc/philox.cuh, csrc/tile_layout.cuh) and the cross-entropy
// backward's GEMM plan (csrc/cross_entropy_plan.h), compiled for the
// host with g++ and exported with C linkage for ctypes: tests/csrc/test_csrc_host_model.py checks
// them — the very code the kernels run — against known answers and independent Python models.
#include "cross_entropy_plan.h"
#include "philox.cuh"
#include "tile_layout.cuh"

using namespace ptft;

extern "C" {

void m_philox(const uint32_t* ctr, uint32_t k0, uint32_t k1, uint32_t* out) {
  uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
  philox4x32_10(c, k0, k1);
  for (int i = 0; i < 4; ++i) out[i] = c[i];
}
uint32_t m_drop_threshold(float p) { return drop_threshold(p); }
uint32_t m_keep_mask8(uint64_t counter, uint64_t seed, uint64_t offset, uint32_t t) {
  return keep_mask8(counter, seed, offset, t);
}
uint32_t m_keep_bits8(uint64_t idx0, uint64_t seed, uint64_t offset, uint32_t t) {
  return keep_bits8(idx0, seed, offset, t);
}
uint64_t m_attn_groups_per_row(int max_k) { return attn_groups_per_row(max_k); }
uint64_t m_attn_drop_group(uint64_t row, uint64_t gpr, int j) { return attn_drop_group(row, gpr, j); }
int m_attn_drop_slot(int j) { return attn_drop_slot(j); }

int m_swizzle(int C, int r, int c) {
  switch (C) {
    case 4:
      return swizzle<4>(r, c);
    case 8:
      return swizzle<8>(r, c);
    case 16:
      return swizzle<16>(r, c);
    default:
      return swizzle<32>(r, c);
  }
}
int m_frag_chunk(int C, int lane_chunk, int r0, int c0) {
  switch (C) {
    case 4:
      return frag_chunk<4>(lane_chunk, r0, c0);
    case 8:
      return frag_chunk<8>(lane_chunk, r0, c0);
    case 16:
      return frag_chunk<16>(lane_chunk, r0, c0);
    default:
      return frag_chunk<32>(lane_chunk, r0, c0);
  }
}
// pattern 0 = rows16, 1 = rows8x2: the lane's (row, chunk) in an ldmatrix x4
int m_lane_row(int pattern, int lane) { return pattern == 0 ? lane_row_rows16(lane) : lane_row_rows8x2(lane); }
int m_lane_chunk(int pattern, int lane) { return pattern == 0 ? lane_chunk_rows16(lane) : lane_chunk_rows8x2(lane); }

int m_linear_cross_entropy_bwd_operands(int reduction) { return linear_cross_entropy_bwd_operands(reduction); }

int m_fwd_key_end(int m0, int bm, int lq, int lk, int causal, int prefix) {
  return attn_fwd_key_end(m0, bm, lq, lk, causal, prefix);
}
int m_bwd_query_begin(int n0, int bm, int lq, int lk, int causal, int prefix) {
  return attn_bwd_query_begin(n0, bm, lq, lk, causal, prefix);
}
int m_tile_all_visible(int m0, int bm, int n0, int bn, int lq, int lk, int causal, int prefix) {
  return attn_tile_all_visible(m0, bm, n0, bn, lq, lk, causal, prefix);
}

}  // extern "C"

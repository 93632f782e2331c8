// sm_80+ data movement for tensor-core tiles: cp.async global → shared copies (zero-filled past
// the valid rows), ldmatrix fragment loads, on the swizzled layout of tile_layout.cuh.
#pragma once

#include "common.cuh"
#include "tile_layout.cuh"

namespace ptft {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The first 128-byte aligned shared address at or after a (the fragment addressing needs it).
__device__ __forceinline__ uint32_t align128(uint32_t a) { return (a + 127u) & ~127u; }

// 16 bytes global → shared, asynchronously; zero-fills the destination when !valid (then gmem is
// not read, but must still be a valid address).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
// 4 bytes global → shared, zero-filled when !valid.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// A tile of kRows rows x kCols 16-bit elements at shared address `base`, swizzled.
template <int kRows_, int kCols>
struct Tile {
  static constexpr int kRows = kRows_, C = kCols / 8;  // rows, 16-byte chunks per row
  static constexpr int kBytes = kRows * kCols * 2;
  uint32_t base;
  __device__ __forceinline__ uint32_t chunk(int r, int c) const { return base + swizzle<C>(r, c) * 16; }
  // Byte address of element (r, col), col even (a 4-byte pair inside one chunk).
  __device__ __forceinline__ uint32_t pair(int r, int col) const { return chunk(r, col >> 3) + (col & 7) * 2; }
  // A lane's ldmatrix x4 base for lane pattern rows16 / rows8x2 (tile_layout.cuh), optionally
  // moved by a warp's (r0, c0); r0 % 8 == 0, c0 even. `base` must be 128-byte aligned.
  __device__ __forceinline__ uint32_t lane_rows16(int lane, int r0 = 0, int c0 = 0) const {
    return at(chunk(lane_row_rows16(lane), lane_chunk_rows16(lane)), r0, c0);
  }
  __device__ __forceinline__ uint32_t lane_rows8x2(int lane, int r0 = 0, int c0 = 0) const {
    return at(chunk(lane_row_rows8x2(lane), lane_chunk_rows8x2(lane)), r0, c0);
  }
  // Address of the fragment at (r0, c0) from a lane base: frag_chunk() in bytes.
  static __device__ __forceinline__ uint32_t at(uint32_t lane_base, int r0, int c0) {
    return static_cast<uint32_t>(frag_chunk<C>(static_cast<int>(lane_base >> 4), r0, c0)) << 4;
  }
  // cp.async kRows rows of global memory (row r at g + r * ld elements, 16-byte aligned) into
  // the tile, by kThreads threads; rows >= valid (>= 1) are zero-filled.
  template <int kThreads, typename T>
  __device__ __forceinline__ void load_async(const T* g, int64_t ld, int valid) const {
    static_assert((kRows * C) % kThreads == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < kRows * C / kThreads; ++i) {
      const int idx = i * kThreads + static_cast<int>(threadIdx.x), r = idx / C, c = idx % C;
      const int rr = r < valid ? r : valid - 1;  // an address inside the tensor even when skipped
      cp_async16(chunk(r, c), g + rr * ld + c * 8, r < valid);
    }
  }
};

// B fragments of two n8 tiles from an ldmatrix x4 result.
__device__ __forceinline__ void split_b(const uint32_t (&f)[4], uint32_t (&b0)[2], uint32_t (&b1)[2]) {
  b0[0] = f[0];
  b0[1] = f[1];
  b1[0] = f[2];
  b1[1] = f[3];
}

}  // namespace ptft

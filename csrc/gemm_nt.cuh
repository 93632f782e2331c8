// A 64x64 block tile of C = A Bᵀ on mma.sync tensor cores, where A (M, K) and B (N, K) are both
// row-major with K contiguous (the "NT" layout of hidden @ weightᵀ and x @ Aᵀ). Used by the
// cross-entropy logits tiles and the LoRA low-rank projections, whose epilogues differ.
//
// Operand rows can be gathered through an index (labeled rows of the cross-entropy), bounded by
// a row count that lives in device memory, and A can carry a fused dropout. 4 warps; warp w owns
// rows 16w..16w+15 of the tile and all 64 columns (8 n-tiles of the C layout in common.cuh).
#pragma once

#include "common.cuh"

namespace ptft {

constexpr int kGemmBM = 64, kGemmBN = 64, kGemmBK = 32, kGemmThreads = 128;
constexpr int kGemmLD = kGemmBK + 8;  // padded shared-memory row (elements)

template <typename T>
struct Operand {
  const T* ptr;
  int64_t ld;            // row stride (elements)
  int64_t rows;          // logical rows
  int64_t k;             // reduction length
  const int32_t* index;  // optional: logical row r reads physical row index[r]
  bool vec;              // 16-byte loads allowed (ptr 16B-aligned, ld % 8 == 0, k % 8 == 0)
  DropState drop;        // dropout on load; element (row, c) is flat element row * k + c
};

template <bool kDrop, typename T>
__device__ __forceinline__ void load_chunk8(const Operand<T>& op, T* dst, int64_t row, int64_t row_limit,
                                            int64_t c) {
  if (row >= row_limit || c >= op.k) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    return;
  }
  const int64_t prow = op.index != nullptr ? op.index[row] : row;
  const T* src = op.ptr + prow * op.ld + c;
  if (op.vec) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[i] = c + i < op.k ? src[i] : from_f<T>(0.f);
  }
  if (kDrop && op.drop.on) {
    const uint32_t keep = op.drop.keep8(prow * op.k + c);  // one or two Philox calls for 8 elements
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (c + i < op.k) dst[i] = from_f<T>(to_f(dst[i]) * op.drop.factor(keep, i));
    }
  }
}

// acc[nt][e] += sum_k A[m0 + row, k] * B[n0 + col, k] for the calling warp's rows/cols.
// a_limit/b_limit: rows past them read as zeros. sA, sB: kGemmBM * kGemmLD elements each.
// kDropA: A's dropout is applied (compiled in only where an operand can carry one).
template <bool kDropA = false, typename T>
__device__ __forceinline__ void gemm_nt_tile(float (&acc)[8][4], const Operand<T>& A, int64_t m0, int64_t a_limit,
                                             const Operand<T>& B, int64_t n0, int64_t b_limit, T* sA, T* sB) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr int kChunks = kGemmBK / 8;
  for (int64_t k0 = 0; k0 < A.k; k0 += kGemmBK) {
    __syncthreads();  // previous k-slice consumed
    for (int c = threadIdx.x; c < kGemmBM * kChunks; c += kGemmThreads) {
      const int r = c / kChunks, kc = (c % kChunks) * 8;
      load_chunk8<kDropA>(A, sA + r * kGemmLD + kc, m0 + r, a_limit, k0 + kc);
      load_chunk8<false>(B, sB + r * kGemmLD + kc, n0 + r, b_limit, k0 + kc);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kGemmBK; kk += 16) {
      uint32_t a[4];
      frag_a_mk(a, sA + warp * 16 * kGemmLD + kk, kGemmLD, lane);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        uint32_t b[2];
        frag_b_nk(b, sB + nt * 8 * kGemmLD + kk, kGemmLD, lane);
        mma16816<T>(acc[nt], a, b);
      }
    }
  }
}

__device__ __forceinline__ void zero_acc(float (&acc)[8][4]) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Host side: the operand of a dense row-major (rows, k) matrix at ptr, no dropout; with index,
// logical row r reads physical row index[r] (device memory).
template <typename T>
Operand<T> operand(const void* ptr, int64_t rows, int64_t k, const int32_t* index = nullptr) {
  Operand<T> op;
  op.ptr = static_cast<const T*>(ptr);
  op.ld = k;
  op.rows = rows;
  op.k = k;
  op.index = index;
  op.vec = aligned16(ptr) && k % 8 == 0;
  op.drop.on = false;
  op.drop.threshold = 0;
  op.drop.scale = 1.f;
  op.drop.seed = op.drop.offset = 0;
  return op;
}

}  // namespace ptft

// LoRA linear: y = x Wᵀ + b + scaling · (dropout(x) Aᵀ) Bᵀ.
//
// The frozen base projection x Wᵀ is a plain GEMM and runs on cuBLAS from the binding. The
// kernels here are the low-rank path: the down projection u = dropout(x) Aᵀ on tensor cores with
// the dropout fused into the operand load (the dropped x never exists), stored as a 16-bit
// hi + lo pair, and the up projection (u_hi + u_lo) Bᵀ fused with the scaling, the bias and the
// add onto the fp32 base output — y is rounded once. Backward helpers:
// the dropout mask applied to x (for dA) and to the low-rank input gradient (for dx).
#include "gemm_nt.cuh"

namespace ptft {
namespace {

// Calls fn(row, col, value) for every in-range element of the calling thread's accumulators.
template <typename Fn>
__device__ __forceinline__ void for_each_acc(const float (&acc)[8][4], int64_t m0, int64_t n0, int64_t m, int64_t n,
                                             Fn fn) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = m0 + warp * 16 + g + 8 * (e >> 1), col = n0 + nt * 8 + 2 * t + (e & 1);
      if (row < m && col < n) fn(row, col, acc[nt][e]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    lora_linear_down_cuda(Operand<T> X, Operand<T> A, PtftDropout drop, T* __restrict__ u_hi, T* __restrict__ u_lo) {
  __shared__ __align__(16) T sA[kGemmBM * kGemmLD];
  __shared__ __align__(16) T sB[kGemmBN * kGemmLD];
  X.drop.init(drop);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kGemmBM, n0 = static_cast<int64_t>(blockIdx.y) * kGemmBN;
  float acc[8][4];
  zero_acc(acc);
  gemm_nt_tile<true>(acc, X, m0, X.rows, A, n0, A.rows, sA, sB);
  const int64_t r = A.rows;
  for_each_acc(acc, m0, n0, X.rows, r, [&](int64_t row, int64_t col, float v) {
    const T hi = from_f<T>(v);  // u = hi + lo keeps the fp32 value for the up projection
    u_hi[row * r + col] = hi;
    u_lo[row * r + col] = from_f<T>(v - to_f(hi));
  });
}

template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    lora_linear_up_add_cuda(Operand<T> U_hi, Operand<T> U_lo, Operand<T> Bm, const float* __restrict__ base,
                            const T* __restrict__ bias, float scaling, T* __restrict__ y) {
  __shared__ __align__(16) T sA[kGemmBM * kGemmLD];
  __shared__ __align__(16) T sB[kGemmBN * kGemmLD];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kGemmBM, n0 = static_cast<int64_t>(blockIdx.y) * kGemmBN;
  float acc[8][4];
  zero_acc(acc);
  gemm_nt_tile(acc, U_hi, m0, U_hi.rows, Bm, n0, Bm.rows, sA, sB);
  gemm_nt_tile(acc, U_lo, m0, U_lo.rows, Bm, n0, Bm.rows, sA, sB);  // K = r: the second pass is cheap
  const int64_t out = Bm.rows;
  for_each_acc(acc, m0, n0, U_hi.rows, out, [&](int64_t row, int64_t col, float v) {
    float s = base[row * out + col] + scaling * v;
    if (bias != nullptr) s += to_f(bias[col]);
    y[row * out + col] = from_f<T>(s);
  });
}

// Grid-stride loop over 8-element chunks (one Philox call each): fn(first index of the chunk).
template <typename Fn>
__device__ __forceinline__ void for_each_chunk8(int64_t n, Fn fn) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * 8;
  for (int64_t c0 = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * 8; c0 < n; c0 += stride) fn(c0);
}

template <typename T>
__global__ void dropout_apply_cuda(const T* __restrict__ x, T* __restrict__ y, int64_t n, PtftDropout drop_args) {
  DropState drop;
  drop.init(drop_args);
  for_each_chunk8(n, [&](int64_t c0) {
    const uint32_t keep = drop.keep8(c0);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (c0 + i < n) y[c0 + i] = from_f<T>(to_f(x[c0 + i]) * drop.factor(keep, i));
    }
  });
}

template <typename T>
__global__ void lora_linear_dx_combine_cuda(const float* __restrict__ dx_base, const float* __restrict__ t,
                                            T* __restrict__ dx, int64_t n, PtftDropout drop_args) {
  DropState drop;
  drop.init(drop_args);
  for_each_chunk8(n, [&](int64_t c0) {
    const uint32_t keep = drop.keep8(c0);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (c0 + i < n) dx[c0 + i] = from_f<T>(dx_base[c0 + i] + t[c0 + i] * drop.factor(keep, i));
    }
  });
}

unsigned elementwise_grid(int64_t n) {
  const int64_t blocks = ceil_div(n, 256 * 8);
  return static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
}

}  // namespace
}  // namespace ptft

cudaError_t ptft_lora_linear_down(PtftDtype dtype, const void* x, const void* lora_a, void* u_hi, void* u_lo, int64_t m,
                                  int64_t in, int64_t r, PtftDropout drop, cudaStream_t stream) {
  if (m < 1 || in < 1 || r < 1) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(dtype, {
    const dim3 grid(static_cast<unsigned>(ptft::ceil_div(m, ptft::kGemmBM)),
                    static_cast<unsigned>(ptft::ceil_div(r, ptft::kGemmBN)));
    ptft::lora_linear_down_cuda<T>
        <<<grid, ptft::kGemmThreads, 0, stream>>>(ptft::operand<T>(x, m, in), ptft::operand<T>(lora_a, r, in), drop,
                                                  static_cast<T*>(u_hi), static_cast<T*>(u_lo));
  })
  return cudaGetLastError();
}

cudaError_t ptft_lora_linear_up_add(PtftDtype dtype, const void* u_hi, const void* u_lo, const void* lora_b,
                                    const float* base, const void* bias, void* y, int64_t m, int64_t out, int64_t r,
                                    float scaling, cudaStream_t stream) {
  if (m < 1 || out < 1 || r < 1) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(dtype, {
    const dim3 grid(static_cast<unsigned>(ptft::ceil_div(m, ptft::kGemmBM)),
                    static_cast<unsigned>(ptft::ceil_div(out, ptft::kGemmBN)));
    ptft::lora_linear_up_add_cuda<T><<<grid, ptft::kGemmThreads, 0, stream>>>(
        ptft::operand<T>(u_hi, m, r), ptft::operand<T>(u_lo, m, r), ptft::operand<T>(lora_b, out, r), base,
        static_cast<const T*>(bias), scaling, static_cast<T*>(y));
  })
  return cudaGetLastError();
}

cudaError_t ptft_dropout_apply(PtftDtype dtype, const void* x, void* y, int64_t n, PtftDropout drop,
                               cudaStream_t stream) {
  if (n < 1) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(dtype, {
    ptft::dropout_apply_cuda<T><<<ptft::elementwise_grid(n), 256, 0, stream>>>(static_cast<const T*>(x),
                                                                               static_cast<T*>(y), n, drop);
  })
  return cudaGetLastError();
}

cudaError_t ptft_lora_linear_dx_combine(PtftDtype dtype, const float* dx_base, const float* t, void* dx, int64_t n,
                                        PtftDropout drop, cudaStream_t stream) {
  if (n < 1) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(dtype, {
    ptft::lora_linear_dx_combine_cuda<T>
        <<<ptft::elementwise_grid(n), 256, 0, stream>>>(dx_base, t, static_cast<T*>(dx), n, drop);
  })
  return cudaGetLastError();
}

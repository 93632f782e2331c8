// Device helpers shared by the ptft_fast kernels: dtype conversion, Philox dropout, reductions,
// and the mma.sync m16n8k16 tensor-core wrapper with fragment loaders.
//
// torch's extension build defines __CUDA_NO_HALF_OPERATORS__ / __CUDA_NO_*_CONVERSIONS__, so
// 16-bit values are only touched through explicit conversion intrinsics here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

#include "philox.cuh"
#include "ptft_kernels.h"

namespace ptft {

// ------------------------------------------------------------------------ dtype conversion
template <typename T>
struct Num;
template <>
struct Num<float> {
  static __device__ __forceinline__ float to_f(float v) { return v; }
  static __device__ __forceinline__ float from_f(float v) { return v; }
};
template <>
struct Num<__half> {
  static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ uint16_t bits(__half v) { return __half_as_ushort(v); }
};
template <>
struct Num<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ uint16_t bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
};

template <typename T>
__device__ __forceinline__ float to_f(T v) {
  return Num<T>::to_f(v);
}
template <typename T>
__device__ __forceinline__ T from_f(float v) {
  return Num<T>::from_f(v);
}
// v rounded to T's precision, as PyTorch rounds every op's result in low precision.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_f(from_f<T>(v));
}

// ----------------------------------------------------------------------------------- dropout
// Per-launch dropout state, read once from the device-side {seed, offset}; the masks are those of
// philox.cuh (one Philox call per 8 elements, 16-bit thresholds).
struct DropState {
  uint64_t seed, offset;
  uint32_t threshold;  // keep iff the element's 16-bit uniform >= threshold
  float scale;         // 1 / (1 - p)
  bool on;
  __device__ __forceinline__ void init(const PtftDropout& d) {
    on = d.rng != nullptr && d.p > 0.f;
    threshold = on ? drop_threshold(d.p) : 0u;
    scale = on ? 1.f / (1.f - d.p) : 1.f;
    seed = on ? static_cast<uint64_t>(d.rng[0]) : 0;
    offset = on ? static_cast<uint64_t>(d.rng[1]) : 0;
  }
  // Bit i set iff flat element idx0 + i (i < 8) is kept; all set without dropout.
  __device__ __forceinline__ uint32_t keep8(uint64_t idx0) const {
    return on ? keep_bits8(idx0, seed, offset, threshold) : 0xffu;
  }
  // The 8 slots of Philox group `counter` (attention's mapping, philox.cuh).
  __device__ __forceinline__ uint32_t group(uint64_t counter) const {
    return keep_mask8(counter, seed, offset, threshold);
  }
  // Multiplier of an element from its keep bit: 0 when dropped, 1/(1-p) when kept.
  __device__ __forceinline__ float factor(uint32_t bits, int i) const { return ((bits >> i) & 1u) ? scale : 0.f; }
};

// ------------------------------------------------------------------------------ reductions
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sum over the 4 threads of an mma quad (lanes sharing groupID).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
// Block-wide sum, result on every thread. red: __shared__ float[32]. blockDim.x % 32 == 0.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nwarps ? red[lane] : 0.f;
  return warp_sum(v);
}

// ---------------------------------------------------------------------- mma.sync m16n8k16
// Fragment layouts (PTX ISA, mma.m16n8k16 with 16-bit inputs), g = lane / 4, t = lane % 4:
//   A (16x16, row): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B (16x8, col):  b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8..2t+9, n g)
//   C (16x8, f32):  c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
// The lower-index element of a pair sits in the low 16 bits of the register.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(T lo, T hi) {
  return static_cast<uint32_t>(Num<T>::bits(lo)) | (static_cast<uint32_t>(Num<T>::bits(hi)) << 16);
}
template <typename T>
__device__ __forceinline__ uint32_t pack2f(float lo, float hi) {
  return pack2<T>(from_f<T>(lo), from_f<T>(hi));
}
// Two adjacent 16-bit elements (4-byte aligned) as one register.
template <typename T>
__device__ __forceinline__ uint32_t ld_pair(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// A fragment from shared memory holding A row-major: s[m * ld + k].
template <typename T>
__device__ __forceinline__ void frag_a_mk(uint32_t (&a)[4], const T* s, int ld, int lane) {
  const int g = lane >> 2, t = lane & 3;
  a[0] = ld_pair(s + g * ld + 2 * t);
  a[1] = ld_pair(s + (g + 8) * ld + 2 * t);
  a[2] = ld_pair(s + g * ld + 2 * t + 8);
  a[3] = ld_pair(s + (g + 8) * ld + 2 * t + 8);
}
// A fragment from shared memory holding A transposed: s[k * ld + m].
template <typename T>
__device__ __forceinline__ void frag_a_km(uint32_t (&a)[4], const T* s, int ld, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const T* r0 = s + (2 * t) * ld;
  const T* r1 = r0 + ld;
  const T* r8 = r0 + 8 * ld;
  const T* r9 = r8 + ld;
  a[0] = pack2(r0[g], r1[g]);
  a[1] = pack2(r0[g + 8], r1[g + 8]);
  a[2] = pack2(r8[g], r9[g]);
  a[3] = pack2(r8[g + 8], r9[g + 8]);
}
// B fragment from shared memory holding B as rows of n with k contiguous: s[n * ld + k].
template <typename T>
__device__ __forceinline__ void frag_b_nk(uint32_t (&b)[2], const T* s, int ld, int lane) {
  const int g = lane >> 2, t = lane & 3;
  b[0] = ld_pair(s + g * ld + 2 * t);
  b[1] = ld_pair(s + g * ld + 2 * t + 8);
}
// B fragment from shared memory holding B as rows of k with n contiguous: s[k * ld + n].
template <typename T>
__device__ __forceinline__ void frag_b_kn(uint32_t (&b)[2], const T* s, int ld, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const T* r0 = s + (2 * t) * ld + g;
  b[0] = pack2(r0[0], r0[ld]);
  b[1] = pack2(r0[8 * ld], r0[9 * ld]);
}
// Two accumulator n-tiles (16x8 each, C layout) of keys/columns 16kk..16kk+15 repacked as the
// A fragment of the next product (FlashAttention's P·V trick).
template <typename T>
__device__ __forceinline__ void frag_a_from_acc(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack2f<T>(c0[0], c0[1]);
  a[1] = pack2f<T>(c0[2], c0[3]);
  a[2] = pack2f<T>(c1[0], c1[1]);
  a[3] = pack2f<T>(c1[2], c1[3]);
}

template <typename T>
struct DtypeOf;
template <>
struct DtypeOf<__half> {
  static constexpr PtftDtype value = PTFT_F16;
};
template <>
struct DtypeOf<__nv_bfloat16> {
  static constexpr PtftDtype value = PTFT_BF16;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace ptft

// Dispatch a 16-bit dtype to a template parameter T; other dtypes return cudaErrorInvalidValue.
#define PTFT_DISPATCH_HALF(DTYPE, ...)                  \
  switch (DTYPE) {                                      \
    case PTFT_F16: {                                    \
      using T = __half;                                 \
      __VA_ARGS__                                       \
    } break;                                            \
    case PTFT_BF16: {                                   \
      using T = __nv_bfloat16;                          \
      __VA_ARGS__                                       \
    } break;                                            \
    default:                                            \
      return cudaErrorInvalidValue;                     \
  }

// Philox-4x32-10 dropout masks: which random bits decide each element, as plain integer functions
// that compile for the device and for the host (tests/csrc builds this header with g++ and checks
// it against Random123's known-answer vectors and an independent Python model).
//
// One Philox call gives four 32-bit words = eight 16-bit uniforms, and every one of them is used:
// element e of a group of 8 is kept iff its uniform u16 >= t, t = round(p * 65536). Sixteen-bit
// thresholds keep the dropout probability exact to 2^-17 (eight-bit ones would turn p = 0.1 into
// 0.1016); the cost is one call per 8 elements instead of one per element.
//
// Counters (128 bits: low 64 = group index, high 64 = the launch's offset; key = the seed):
//   * elementwise (layer norm, LoRA): element idx of a flat tensor is slot idx & 7 of group idx >> 3.
//   * attention probability (b, h, i, j), row R = (b * Hq + h) * max_q + i: group
//     R * attn_groups_per_row(max_k) + (j >> 5) * 4 + ((j >> 1) & 3), slot ((j >> 3) & 3) * 2 + (j & 1).
//     So the 8 elements of a group are the keys one mma thread holds for one query row in 32 keys
//     (columns 2t, 2t+1 of four 8-wide n-tiles): one call per thread, row and 32 keys, in the forward
//     and in the backward alike, whatever the tile sizes.
#pragma once

#include <stdint.h>

#ifdef __CUDACC__
#define PTFT_HD __host__ __device__ __forceinline__
#else
#define PTFT_HD inline
#endif

namespace ptft {

PTFT_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Random123's philox4x32 with 10 rounds: c = counter (in/out), k = key.
PTFT_HD void philox4x32_10(uint32_t (&c)[4], uint32_t k0, uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int i = 0; i < 10; ++i) {
    const uint32_t hi0 = mulhi32(M0, c[0]), lo0 = M0 * c[0];
    const uint32_t hi1 = mulhi32(M1, c[2]), lo1 = M1 * c[2];
    const uint32_t x0 = hi1 ^ c[1] ^ k0, x2 = hi0 ^ c[3] ^ k1;
    c[0] = x0;
    c[1] = lo1;
    c[2] = x2;
    c[3] = lo0;
    k0 += W0;
    k1 += W1;
  }
}

// Keep threshold of dropout probability p in [0, 1): round(p * 65536), ties to even (as the
// device's __float2uint_rn and Python's round); 65536 (p within 2^-17 of 1) keeps nothing.
PTFT_HD uint32_t drop_threshold(float p) {
  const float x = p * 65536.0f;  // exact: a power-of-two scaling
  uint32_t t = static_cast<uint32_t>(x);
  const float frac = x - static_cast<float>(t);
  if (frac > 0.5f || (frac == 0.5f && (t & 1u))) ++t;
  return t;
}

// Bit s (s = 0..7) set iff slot s of the group at `counter` is kept.
PTFT_HD uint32_t keep_mask8(uint64_t counter, uint64_t seed, uint64_t offset, uint32_t threshold) {
  uint32_t c[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                   static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)};
  philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  uint32_t m = 0;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int w = 0; w < 4; ++w) {
    m |= static_cast<uint32_t>((c[w] & 0xffffu) >= threshold) << (2 * w);
    m |= static_cast<uint32_t>((c[w] >> 16) >= threshold) << (2 * w + 1);
  }
  return m;
}

// Elementwise masks: bit i set iff flat element idx0 + i (i = 0..7) is kept. One call when idx0
// is a multiple of 8, two otherwise.
PTFT_HD uint32_t keep_bits8(uint64_t idx0, uint64_t seed, uint64_t offset, uint32_t threshold) {
  const uint64_t g = idx0 >> 3;
  const uint32_t off = static_cast<uint32_t>(idx0 & 7);
  uint32_t m = keep_mask8(g, seed, offset, threshold);
  if (off != 0) m = (m >> off) | (keep_mask8(g + 1, seed, offset, threshold) << (8 - off));
  return m & 0xffu;
}

// Attention probabilities: groups per query row (4 per 32 keys).
PTFT_HD uint64_t attn_groups_per_row(int max_k) { return static_cast<uint64_t>((max_k + 31) >> 5) * 4; }
// Group counter of key j in row R (see the header comment).
PTFT_HD uint64_t attn_drop_group(uint64_t row, uint64_t groups_per_row, int j) {
  return row * groups_per_row + static_cast<uint64_t>(j >> 5) * 4 + static_cast<uint64_t>((j >> 1) & 3);
}
PTFT_HD int attn_drop_slot(int j) { return ((j >> 3) & 3) * 2 + (j & 1); }

}  // namespace ptft

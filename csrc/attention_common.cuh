// Flash attention (FlashAttention-2 schedule) on mma.sync tensor cores: pieces shared by
// attention_fwd.cu and attention_bwd.cu (two translation units so they compile in parallel).
//
// Features: causal (bottom-right aligned per sequence), key padding mask, varlen (cu_seqlens),
// additive bias with gradient (arbitrary broadcast strides), Philox dropout on the attention
// probabilities, GQA/MQA; fp16/bf16 inputs, fp32 accumulation; head dims 64 and 128.
//
// Tiles are 64 queries x 64 keys with 4 warps (16 rows each). Operands are staged in padded
// shared memory with plain 16-byte loads (no cp.async pipelining, no ldmatrix) — simple and
// correct first; performance tuning needs a GPU to measure.
#pragma once

#include "common.cuh"

namespace ptft {
namespace attn {

constexpr int kBlock = 64;    // queries (fwd) / keys (bwd) per block and per inner tile
constexpr int kThreads = 128;  // 4 warps x 16 rows

inline bool valid(const PtftAttnArgs& p) {
  return p.batch >= 1 && p.batch <= 65535 && p.hq >= 1 && p.hq <= 65535 && p.hkv >= 1 && p.hq % p.hkv == 0 &&
         p.max_q >= 1 && p.max_k >= 1 && (p.head_dim == 64 || p.head_dim == 128);
}

struct SeqInfo {
  int64_t q0, k0;  // first row of this sequence in the (rows, H, D) tensors
  int lq, lk;      // sequence lengths
};

__device__ __forceinline__ SeqInfo seq_info(const PtftAttnArgs& p, int b) {
  SeqInfo s;
  if (p.cu_q != nullptr) {
    s.q0 = p.cu_q[b];
    s.lq = p.cu_q[b + 1] - p.cu_q[b];
    s.k0 = p.cu_k[b];
    s.lk = p.cu_k[b + 1] - p.cu_k[b];
    // max_seqlen_q/k too small would index lse/bias/mask out of bounds: the Python layer asserts
    // against it on the device; clamping here keeps every access in bounds regardless.
    s.lq = min(s.lq, p.max_q);
    s.lk = min(s.lk, p.max_k);
  } else {
    s.q0 = static_cast<int64_t>(b) * p.max_q;
    s.lq = p.max_q;
    s.k0 = static_cast<int64_t>(b) * p.max_k;
    s.lk = p.max_k;
  }
  return s;
}

// Copy kBlock rows of D elements (row stride ld in global memory) to shared memory with row
// stride D + 8; rows >= valid are zero-filled.
template <typename T, int D>
__device__ __forceinline__ void load_rows(T* s, const T* g, int64_t ld, int valid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < kBlock * kChunks; c += kThreads) {
    const int r = c / kChunks, cc = (c % kChunks) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4*>(g + r * ld + cc);
    *reinterpret_cast<uint4*>(s + r * (D + 8) + cc) = v;
  }
}

// Whether query i may attend key j of sequence b (positions within the sequence).
__device__ __forceinline__ bool allowed(const PtftAttnArgs& p, const SeqInfo& s, int b, int i, int j) {
  if (i >= s.lq || j >= s.lk) return false;
  if (p.causal && j > i + (s.lk - s.lq)) return false;
  if (p.key_padding_mask != nullptr && p.key_padding_mask[static_cast<int64_t>(b) * p.max_k + j] == 0) return false;
  return true;
}

template <typename T>
__device__ __forceinline__ float bias_at(const PtftAttnArgs& p, int b, int h, int i, int j) {
  if (p.bias == nullptr) return 0.f;
  const T* bias = static_cast<const T*>(p.bias);
  return to_f(bias[b * p.bias_sb + h * p.bias_sh + i * p.bias_sq + j * p.bias_sk]);
}

// Counter of the dropout draw for probability (b, h, i, j); identical in forward and backward.
__device__ __forceinline__ uint64_t drop_index(const PtftAttnArgs& p, int b, int h, int i, int j) {
  return ((static_cast<uint64_t>(b) * p.hq + h) * p.max_q + i) * static_cast<uint64_t>(p.max_k) + j;
}

}  // namespace attn
}  // namespace ptft

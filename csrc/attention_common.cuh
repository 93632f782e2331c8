// Flash attention (FlashAttention-2 schedule) on mma.sync tensor cores: pieces shared by
// attention_fwd.cu and attention_bwd.cu (two translation units so they compile in parallel).
//
// Features: causal (bottom-right aligned per sequence; prefix LM: a per-sequence prefix length
// below which keys are seen by every query), key padding mask, varlen (cu_seqlens),
// additive bias with gradient (arbitrary broadcast strides), T5 relative position bias looked up
// in-kernel (bucket table + per-head values, gradient into the table), Philox dropout on the
// attention probabilities, GQA/MQA; fp16/bf16 inputs, fp32 accumulation; head dims 32, 64, 128.
//
// Data movement: cp.async (sm_80+) into swizzled shared memory (tile_layout.cuh), K/V (forward)
// and Q/dO (backward) tiles double-buffered, every mma operand fetched by ldmatrix (.trans where
// the operand is stored transposed). Scores are kept in log2 units (scale · log2 e folded in) so
// the softmax uses exp2.
#pragma once

#include "smem_tile.cuh"

namespace ptft {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMaxBuckets = 256;  // T5 buckets: the backward sums the table gradient in shared memory

inline bool valid(const PtftAttnArgs& p) {
  return p.batch >= 1 && p.batch <= 65535 && p.hq >= 1 && p.hq <= 65535 && p.hkv >= 1 && p.hq % p.hkv == 0 &&
         p.max_q >= 1 && p.max_k >= 1 && (p.head_dim == 32 || p.head_dim == 64 || p.head_dim == 128) &&
         (p.rel_lut == nullptr || (p.rel_table != nullptr && p.num_buckets >= 1 && p.num_buckets <= kMaxBuckets));
}

struct SeqInfo {
  int64_t q0, k0;  // first row of this sequence in the (rows, H, D) tensors
  int lq, lk;      // sequence lengths
  int prefix;      // prefix LM: keys j < prefix are seen by every query (0: plain causal)
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
  s.prefix = p.prefix_len != nullptr ? p.prefix_len[b] : 0;
  return s;
}

// Bit nt * 2 + e set iff key kb + nt * 8 + 2t + e (one thread's keys of a kNT * 8-key span)
// exists and is not padding.
template <int kNT>
__device__ __forceinline__ uint32_t key_bits(const PtftAttnArgs& p, const SeqInfo& s, int b, int kb, int t) {
  uint32_t bits = 0;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int j = kb + nt * 8 + 2 * t + e;
      bool ok = j < s.lk;
      if (ok && p.key_padding_mask != nullptr) ok = p.key_padding_mask[static_cast<int64_t>(b) * p.max_k + j] != 0;
      bits |= static_cast<uint32_t>(ok) << (nt * 2 + e);
    }
  }
  return bits;
}

// Whether query i may attend key j, given that j's key bit is set.
__device__ __forceinline__ bool row_sees(const PtftAttnArgs& p, const SeqInfo& s, int i, int j) {
  return i < s.lq && (!p.causal || j <= i + (s.lk - s.lq) || j < s.prefix);
}

__device__ __forceinline__ bool has_bias(const PtftAttnArgs& p) { return p.bias != nullptr || p.rel_lut != nullptr; }

// T5 bucket of (i, j); i, j inside the sequence.
__device__ __forceinline__ int rel_bucket(const PtftAttnArgs& p, int i, int j) {
  return p.rel_lut[j - i + p.max_q - 1];
}

// Additive bias of (b, h, i, j) in log2 units; i, j inside the sequence.
template <typename T>
__device__ __forceinline__ float bias2(const PtftAttnArgs& p, int b, int h, int i, int j) {
  float v = 0.f;
  if (p.bias != nullptr) {
    v = to_f(static_cast<const T*>(p.bias)[b * p.bias_sb + h * p.bias_sh + i * p.bias_sq + j * p.bias_sk]);
  }
  if (p.rel_lut != nullptr) v += p.rel_table[rel_bucket(p, i, j) * p.hq + h];
  return v * kLog2e;
}

// Dropout row of (b, h, i) (philox.cuh's attention mapping).
__device__ __forceinline__ uint64_t drop_row(const PtftAttnArgs& p, int b, int h, int i) {
  return (static_cast<uint64_t>(b) * p.hq + h) * p.max_q + i;
}

__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ uint4 ld_shared_v4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

// Copies rows [r0, r0 + nrows) of a swizzled shared tile to global rows (row r at g + r * ld),
// 16 bytes per lane and access, one warp; rows >= valid are skipped.
template <typename TileT, typename T>
__device__ __forceinline__ void store_rows_warp(const TileT& tile, int r0, int nrows, T* g, int64_t ld, int valid,
                                                int lane) {
  for (int idx = lane; idx < nrows * TileT::C; idx += 32) {
    const int r = r0 + idx / TileT::C, c = idx % TileT::C;
    if (r < valid) *reinterpret_cast<uint4*>(g + r * ld + c * 8) = ld_shared_v4(tile.chunk(r, c));
  }
}

// Copies the rows < valid of a swizzled shared tile to global rows (row r at g + r * ld), 16 bytes
// per thread and access, by the whole block.
template <int kThreads, typename TileT, typename T>
__device__ __forceinline__ void store_rows_block(const TileT& tile, T* g, int64_t ld, int valid) {
  for (int idx = threadIdx.x; idx < TileT::kRows * TileT::C; idx += kThreads) {
    const int r = idx / TileT::C, c = idx % TileT::C;
    if (r < valid) *reinterpret_cast<uint4*>(g + r * ld + c * 8) = ld_shared_v4(tile.chunk(r, c));
  }
}

}  // namespace attn
}  // namespace ptft

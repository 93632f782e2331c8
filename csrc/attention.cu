// Flash attention (FlashAttention-2 schedule) on mma.sync tensor cores, forward and backward.
//
// Features: causal (bottom-right aligned per sequence), key padding mask, varlen (cu_seqlens),
// additive bias with gradient (arbitrary broadcast strides), Philox dropout on the attention
// probabilities, GQA/MQA; fp16/bf16 inputs, fp32 accumulation; head dims 64 and 128.
//
// Tiles are 64 queries x 64 keys with 4 warps (16 rows each). Operands are staged in padded
// shared memory with plain 16-byte loads (no cp.async pipelining, no ldmatrix) — simple and
// correct first; performance tuning needs a GPU to measure.
#include "common.cuh"

namespace ptft {
namespace {

constexpr int kBlock = 64;    // queries (fwd) / keys (bwd) per block and per inner tile
constexpr int kThreads = 128;  // 4 warps x 16 rows

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

// ------------------------------------------------------------------------------- forward
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_fwd_cuda(const PtftAttnArgs p) {
  constexpr int LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kBlock * LD;
  T* sV = sK + kBlock * LD;

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kBlock;
  const SeqInfo s = seq_info(p, b);
  if (m0 >= s.lq) return;
  const int hk = h / (p.hq / p.hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  DropState drop;
  drop.init(p.drop);

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const int64_t q_ld = static_cast<int64_t>(p.hq) * D, k_ld = static_cast<int64_t>(p.hkv) * D;
  load_rows<T, D>(sQ, q + (s.q0 + m0) * q_ld + h * D, q_ld, s.lq - m0);

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F}, row_sum[2] = {0.f, 0.f};
  const int qi[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};

  // Causal: the last query of this block sees keys j <= m0 + 63 + (lk - lq).
  const int n_end = p.causal ? min(s.lk, m0 + kBlock + (s.lk - s.lq)) : s.lk;
  for (int n0 = 0; n0 < n_end; n0 += kBlock) {
    __syncthreads();  // the previous K/V tile is fully consumed
    load_rows<T, D>(sK, k + (s.k0 + n0) * k_ld + hk * D, k_ld, s.lk - n0);
    load_rows<T, D>(sV, v + (s.k0 + n0) * k_ld + hk * D, k_ld, s.lk - n0);
    __syncthreads();

    float sc[8][4];  // S = Q Kᵀ for this warp's 16 queries x 64 keys
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
      uint32_t a[4];
      frag_a_mk(a, sQ + warp * 16 * LD + kk, LD, lane);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        uint32_t bf[2];
        frag_b_nk(bf, sK + nt * 8 * LD + kk, LD, lane);
        mma16816<T>(sc[nt], a, bf);
      }
    }
    // scale + bias + masks, then the online softmax per row (rows qi[0], qi[1])
    float tile_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, j = n0 + nt * 8 + 2 * t + (e & 1);
        const float val = allowed(p, s, b, qi[r], j) ? sc[nt][e] * p.softmax_scale + bias_at<T>(p, b, h, qi[r], j)
                                                     : -CUDART_INF_F;
        sc[nt][e] = val;
        tile_max[r] = fmaxf(tile_max[r], val);
      }
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float new_max = fmaxf(row_max[r], quad_max(tile_max[r]));
      base[r] = new_max == -CUDART_INF_F ? 0.f : new_max;  // fully masked so far: avoid inf - inf
      const float alpha = __expf(row_max[r] - base[r]);
      row_max[r] = new_max;
      row_sum[r] *= alpha;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[dt][2 * r] *= alpha;
        o[dt][2 * r + 1] *= alpha;
      }
    }
    float part[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const float pr = __expf(sc[nt][e] - base[r]);
        part[r] += pr;
        // the row sum uses undropped probabilities; P·V uses the dropped, rescaled ones
        sc[nt][e] = drop.on ? pr * drop.factor(drop_index(p, b, h, qi[r], n0 + nt * 8 + 2 * t + (e & 1))) : pr;
      }
    }
    row_sum[0] += quad_sum(part[0]);
    row_sum[1] += quad_sum(part[1]);
    // O += P V: P from the accumulators (k = keys), V rows are keys with d contiguous
#pragma unroll
    for (int kk = 0; kk < kBlock / 16; ++kk) {
      uint32_t a[4];
      frag_a_from_acc<T>(a, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        uint32_t bf[2];
        frag_b_kn(bf, sV + kk * 16 * LD + dt * 8, LD, lane);
        mma16816<T>(o[dt], a, bf);
      }
    }
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = qi[r];
    if (i >= s.lq) continue;
    const float inv = row_sum[r] > 0.f ? 1.f / row_sum[r] : 0.f;  // no visible key → zeros
    T* orow = out + (s.q0 + i) * q_ld + h * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<uint32_t*>(orow + dt * 8 + 2 * t) = pack2f<T>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    }
    if (t == 0) {
      // +inf marks "no visible key": the backward then gives these rows zero probability
      p.lse[(static_cast<int64_t>(b) * p.hq + h) * p.max_q + i] =
          row_sum[r] > 0.f ? row_max[r] + __logf(row_sum[r]) : CUDART_INF_F;
    }
  }
}

// ------------------------------------------------------------------------------ backward
// dsum[b, h, i] = sum_d dout * out (the softmax-backward row term), one warp per query row.
template <typename T>
__global__ void attention_bwd_dsum_cuda(const PtftAttnArgs p) {
  const int b = blockIdx.z, h = blockIdx.y;
  const int i = blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const SeqInfo s = seq_info(p, b);
  if (i >= s.lq) return;
  const int64_t off = ((s.q0 + i) * p.hq + h) * p.head_dim;
  const T* o = static_cast<const T*>(p.out) + off;
  const T* d = static_cast<const T*>(p.dout) + off;
  float acc = 0.f;
  for (int c = lane; c < p.head_dim; c += 32) acc += to_f(o[c]) * to_f(d[c]);
  acc = warp_sum(acc);
  if (lane == 0) p.dsum[(static_cast<int64_t>(b) * p.hq + h) * p.max_q + i] = acc;
}

// One block per (64 keys, kv head, sequence); loops over the query heads of its GQA group and
// over query blocks. dK/dV accumulate in registers (no atomics); dQ goes to an fp32 buffer
// with atomicAdd; dBias (when asked) is written element-wise to a full fp32 buffer.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attention_bwd_cuda(const PtftAttnArgs p) {
  constexpr int LD = D + 8, LDS = kBlock + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + kBlock * LD;
  T* sQ = sV + kBlock * LD;
  T* sdO = sQ + kBlock * LD;
  T* sdS = sdO + kBlock * LD;  // (keys, queries): dSᵀ of the current tile
  float* sLse = reinterpret_cast<float*>(sdS + kBlock * LDS);
  float* sDsum = sLse + kBlock;

  const int b = blockIdx.z, hk = blockIdx.y, n0 = blockIdx.x * kBlock;
  const SeqInfo s = seq_info(p, b);
  if (n0 >= s.lk) return;
  const int group = p.hq / p.hkv;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  DropState drop;
  drop.init(p.drop);

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);
  const int64_t q_ld = static_cast<int64_t>(p.hq) * D, k_ld = static_cast<int64_t>(p.hkv) * D;
  load_rows<T, D>(sK, k + (s.k0 + n0) * k_ld + hk * D, k_ld, s.lk - n0);
  load_rows<T, D>(sV, v + (s.k0 + n0) * k_ld + hk * D, k_ld, s.lk - n0);

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  }
  const int kj[2] = {n0 + warp * 16 + g, n0 + warp * 16 + g + 8};
  // Causal: key n0 is first seen by query n0 - (lk - lq).
  const int m_first = p.causal ? max(0, n0 - (s.lk - s.lq)) / kBlock * kBlock : 0;

  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    const int64_t stat_row = (static_cast<int64_t>(b) * p.hq + h) * p.max_q;
    for (int m0 = m_first; m0 < s.lq; m0 += kBlock) {
      __syncthreads();  // previous tile's sQ/sdO/sdS fully consumed
      load_rows<T, D>(sQ, q + (s.q0 + m0) * q_ld + h * D, q_ld, s.lq - m0);
      load_rows<T, D>(sdO, dout + (s.q0 + m0) * q_ld + h * D, q_ld, s.lq - m0);
      for (int r = threadIdx.x; r < kBlock; r += kThreads) {
        const bool in = m0 + r < s.lq;
        sLse[r] = in ? p.lse[stat_row + m0 + r] : CUDART_INF_F;
        sDsum[r] = in ? p.dsum[stat_row + m0 + r] : 0.f;
      }
      __syncthreads();

      // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: this warp's 16 keys x 64 queries
      float st[8][4], dpt[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
      }
#pragma unroll
      for (int kk = 0; kk < D; kk += 16) {
        uint32_t ak[4], av[4];
        frag_a_mk(ak, sK + warp * 16 * LD + kk, LD, lane);
        frag_a_mk(av, sV + warp * 16 * LD + kk, LD, lane);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          uint32_t bq[2], bo[2];
          frag_b_nk(bq, sQ + nt * 8 * LD + kk, LD, lane);
          frag_b_nk(bo, sdO + nt * 8 * LD + kk, LD, lane);
          mma16816<T>(st[nt], ak, bq);
          mma16816<T>(dpt[nt], av, bo);
        }
      }
      // Pᵀ (dropped, for dV) into st; dSᵀ into dpt
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1, il = nt * 8 + 2 * t + (e & 1), i = m0 + il, j = kj[r];
          float pr = 0.f, ds = 0.f;
          if (allowed(p, s, b, i, j)) {
            pr = __expf(st[nt][e] * p.softmax_scale + bias_at<T>(p, b, h, i, j) - sLse[il]);
            const float f = drop.on ? drop.factor(drop_index(p, b, h, i, j)) : 1.f;
            ds = pr * (dpt[nt][e] * f - sDsum[il]);
            if (p.dbias_full != nullptr) p.dbias_full[(stat_row + i) * p.max_k + j] = ds;
            pr *= f;
          }
          st[nt][e] = pr;
          dpt[nt][e] = ds;
        }
      }
      // dV += Pᵀ dO and dK += dSᵀ Q (scale applied at the end); B rows are queries
#pragma unroll
      for (int kk = 0; kk < kBlock / 16; ++kk) {
        uint32_t ap[4], ad[4];
        frag_a_from_acc<T>(ap, st[2 * kk], st[2 * kk + 1]);
        frag_a_from_acc<T>(ad, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          uint32_t bo[2], bq[2];
          frag_b_kn(bo, sdO + kk * 16 * LD + dt * 8, LD, lane);
          frag_b_kn(bq, sQ + kk * 16 * LD + dt * 8, LD, lane);
          mma16816<T>(dv[dt], ap, bo);
          mma16816<T>(dk[dt], ad, bq);
        }
      }
      // dSᵀ → shared memory so each warp can take 16 queries for dQ = dS K
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int c = nt * 8 + 2 * t;
        sdS[(warp * 16 + g) * LDS + c] = from_f<T>(dpt[nt][0]);
        sdS[(warp * 16 + g) * LDS + c + 1] = from_f<T>(dpt[nt][1]);
        sdS[(warp * 16 + g + 8) * LDS + c] = from_f<T>(dpt[nt][2]);
        sdS[(warp * 16 + g + 8) * LDS + c + 1] = from_f<T>(dpt[nt][3]);
      }
      __syncthreads();
      float dq[D / 8][4];
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBlock; kk += 16) {
        uint32_t a[4];  // A(m = query, k = key) = sdS[key][query]
        frag_a_km(a, sdS + kk * LDS + warp * 16, LDS, lane);
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          uint32_t bk[2];  // B(k = key, n = d) = sK[key][d]
          frag_b_kn(bk, sK + kk * LD + dt * 8, LD, lane);
          mma16816<T>(dq[dt], a, bk);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = m0 + warp * 16 + g + 8 * r;
        if (i >= s.lq) continue;
        float* dqrow = p.dq_acc + (s.q0 + i) * q_ld + h * D;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          atomicAdd(dqrow + dt * 8 + 2 * t, dq[dt][2 * r] * p.softmax_scale);
          atomicAdd(dqrow + dt * 8 + 2 * t + 1, dq[dt][2 * r + 1] * p.softmax_scale);
        }
      }
    }
  }

  T* dkp = static_cast<T*>(p.dk);
  T* dvp = static_cast<T*>(p.dv);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = kj[r];
    if (j >= s.lk) continue;
    const int64_t off = (s.k0 + j) * k_ld + hk * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<uint32_t*>(dkp + off + dt * 8 + 2 * t) =
          pack2f<T>(dk[dt][2 * r] * p.softmax_scale, dk[dt][2 * r + 1] * p.softmax_scale);
      *reinterpret_cast<uint32_t*>(dvp + off + dt * 8 + 2 * t) = pack2f<T>(dv[dt][2 * r], dv[dt][2 * r + 1]);
    }
  }
}

template <int D>
constexpr size_t fwd_smem() {
  return 3 * kBlock * (D + 8) * 2;
}
template <int D>
constexpr size_t bwd_smem() {
  return 4 * kBlock * (D + 8) * 2 + kBlock * (kBlock + 8) * 2 + 2 * kBlock * sizeof(float);
}

template <typename T, int D>
cudaError_t launch_fwd(const PtftAttnArgs& p, cudaStream_t stream) {
  auto kernel = attention_fwd_cuda<T, D>;
  constexpr size_t smem = fwd_smem<D>();
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.max_q, kBlock)), p.hq, p.batch);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t launch_bwd(const PtftAttnArgs& p, cudaStream_t stream) {
  const dim3 grid_dsum(static_cast<unsigned>(ceil_div(p.max_q, kThreads / 32)), p.hq, p.batch);
  attention_bwd_dsum_cuda<T><<<grid_dsum, kThreads, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  auto kernel = attention_bwd_cuda<T, D>;
  constexpr size_t smem = bwd_smem<D>();
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.max_k, kBlock)), p.hkv, p.batch);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

bool valid(const PtftAttnArgs& p) {
  return p.batch >= 1 && p.batch <= 65535 && p.hq >= 1 && p.hq <= 65535 && p.hkv >= 1 && p.hq % p.hkv == 0 &&
         p.max_q >= 1 && p.max_k >= 1 && ptft_attention_supports_head_dim(p.head_dim);
}

}  // namespace
}  // namespace ptft

bool ptft_attention_supports_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

cudaError_t ptft_attention_fwd(const PtftAttnArgs& args, cudaStream_t stream) {
  if (!ptft::valid(args)) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(args.dtype, {
    return args.head_dim == 64 ? ptft::launch_fwd<T, 64>(args, stream) : ptft::launch_fwd<T, 128>(args, stream);
  })
  return cudaSuccess;
}

cudaError_t ptft_attention_bwd(const PtftAttnArgs& args, cudaStream_t stream) {
  if (!ptft::valid(args)) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(args.dtype, {
    return args.head_dim == 64 ? ptft::launch_bwd<T, 64>(args, stream) : ptft::launch_bwd<T, 128>(args, stream);
  })
  return cudaSuccess;
}

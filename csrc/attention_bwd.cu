// Flash attention backward: the dsum row term, then one block per (64 keys, kv head, sequence).
#include "attention_common.cuh"

namespace ptft {
namespace attn {
namespace {

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
constexpr size_t bwd_smem() {
  return 4 * kBlock * (D + 8) * 2 + kBlock * (kBlock + 8) * 2 + 2 * kBlock * sizeof(float);
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

}  // namespace
}  // namespace attn
}  // namespace ptft

cudaError_t ptft_attention_bwd(const PtftAttnArgs& args, cudaStream_t stream) {
  if (!ptft::attn::valid(args)) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(args.dtype, {
    return args.head_dim == 64 ? ptft::attn::launch_bwd<T, 64>(args, stream) : ptft::attn::launch_bwd<T, 128>(args, stream);
  })
  return cudaSuccess;
}

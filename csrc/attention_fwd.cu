// Flash attention forward: one block per (64 queries, query head, sequence), online softmax over
// 64-key tiles; writes the output and the per-row log-sum-exp for the backward pass.
#include "attention_common.cuh"

namespace ptft {
namespace attn {
namespace {

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

template <int D>
constexpr size_t fwd_smem() {
  return 3 * kBlock * (D + 8) * 2;
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

}  // namespace
}  // namespace attn
}  // namespace ptft

bool ptft_attention_supports_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

cudaError_t ptft_attention_fwd(const PtftAttnArgs& args, cudaStream_t stream) {
  if (!ptft::attn::valid(args)) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(args.dtype, {
    return args.head_dim == 64 ? ptft::attn::launch_fwd<T, 64>(args, stream) : ptft::attn::launch_fwd<T, 128>(args, stream);
  })
  return cudaSuccess;
}


// Flash attention forward: one block per (kM queries, query head, sequence), online softmax over
// 64-key tiles; writes the output and the per-row log-sum-exp for the backward pass.
//
// Warp w owns kMT m16 tiles (16 rows each) of the query block; K/V tiles stream through two
// shared-memory stages (cp.async for tile n+1 is in flight while tile n is computed).
#include "attention_common.cuh"

namespace ptft {
namespace attn {
namespace {

template <int D, int kWarps, int kMT>
struct FwdCfg {
  static constexpr int kM = kWarps * 16 * kMT;  // queries per block
  static constexpr int kN = 64;                 // keys per tile
  static constexpr int kThreads = kWarps * 32;
  using TileQ = Tile<kM, D>;
  using TileKV = Tile<kN, D>;
  static constexpr int kSmem = TileQ::kBytes + 4 * TileKV::kBytes + 128;  // Q + K, V x 2 stages (+ alignment)
};

template <typename T, int D, int kWarps, int kMT>
__global__ void __launch_bounds__(kWarps * 32) attention_fwd_cuda(const PtftAttnArgs p) {
  using Cfg = FwdCfg<D, kWarps, kMT>;
  using TileQ = typename Cfg::TileQ;
  using TileKV = typename Cfg::TileKV;
  constexpr int kM = Cfg::kM, kN = Cfg::kN, kThreads = Cfg::kThreads, kRows = 16 * kMT;
  extern __shared__ __align__(128) unsigned char smem[];

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kM;
  const SeqInfo s = seq_info(p, b);
  if (m0 >= s.lq) return;
  const int hk = h / (p.hq / p.hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int w0 = warp * kRows;  // this warp's first row in the block

  const uint32_t base = align128(smem_addr(smem));
  const typename Cfg::TileQ sQ{base};
  auto sK = [&](int st) { return TileKV{base + Cfg::TileQ::kBytes + st * TileKV::kBytes}; };
  auto sV = [&](int st) { return TileKV{base + Cfg::TileQ::kBytes + (2 + st) * TileKV::kBytes}; };

  const int64_t q_ld = static_cast<int64_t>(p.hq) * D, k_ld = static_cast<int64_t>(p.hkv) * D;
  const T* kh = static_cast<const T*>(p.k) + s.k0 * k_ld + hk * D;
  const T* vh = static_cast<const T*>(p.v) + s.k0 * k_ld + hk * D;
  const int n_end = attn_fwd_key_end(m0, kM, s.lq, s.lk, p.causal, s.prefix);
  const int n_tiles = (n_end + kN - 1) / kN;

  sQ.template load_async<kThreads>(static_cast<const T*>(p.q) + (s.q0 + m0) * q_ld + h * D, q_ld, s.lq - m0);
  if (n_tiles > 0) {
    sK(0).template load_async<kThreads>(kh, k_ld, s.lk);
    sV(0).template load_async<kThreads>(vh, k_ld, s.lk);
  }
  cp_async_commit();

  DropState drop;
  drop.init(p.drop);
  const uint64_t gpr = attn_groups_per_row(p.max_k);
  const float scale2 = p.softmax_scale * kLog2e;
  const bool biased = has_bias(p);
  // ldmatrix lane bases (tile_layout.cuh): Q as A [m][k], K as B [n][k], V as B [k][n] (.trans)
  const uint32_t lq_a = sQ.lane_rows16(lane, w0, 0), lk_b = sK(0).lane_rows8x2(lane), lv_b = sV(0).lane_rows16(lane);

  float o[kMT][D / 8][4];
  float row_max[kMT][2], row_sum[kMT][2];  // running max (log2 units) and sum of exp2
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -CUDART_INF_F;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  for (int it = 0; it < n_tiles; ++it) {
    cp_async_wait<0>();  // tile `it` (issued one iteration ago) has landed, for this thread...
    __syncthreads();     // ...and for all; everyone is done with tile it - 1, whose stage is reused next
    if (it + 1 < n_tiles) {
      const int st = (it + 1) & 1, n1 = (it + 1) * kN;
      sK(st).template load_async<kThreads>(kh + n1 * k_ld, k_ld, s.lk - n1);
      sV(st).template load_async<kThreads>(vh + n1 * k_ld, k_ld, s.lk - n1);
    }
    cp_async_commit();
    const int n0 = it * kN;
    const uint32_t stage = (it & 1) * TileKV::kBytes;

    // S = Q Kᵀ: kMT x 8 accumulator tiles of 16 queries x 8 keys
    float sc[kMT][8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) sc[mt][nt][0] = sc[mt][nt][1] = sc[mt][nt][2] = sc[mt][nt][3] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) ldsm_x4(a[mt], TileQ::at(lq_a, mt * 16, kk * 2));
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t f[4], b0[2], b1[2];
        ldsm_x4(f, TileKV::at(lk_b + stage, np * 16, kk * 2));
        split_b(f, b0, b1);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma16816<T>(sc[mt][2 * np], a[mt], b0);
          mma16816<T>(sc[mt][2 * np + 1], a[mt], b1);
        }
      }
    }

    // scale, bias, masks (only on tiles that need them), then the online softmax per row
    const bool all_visible =
        p.key_padding_mask == nullptr && attn_tile_all_visible(m0, kM, n0, kN, s.lq, s.lk, p.causal, s.prefix);
    const uint32_t kbits = all_visible ? 0xffffu : key_bits<8>(p, s, b, n0, t);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = m0 + w0 + mt * 16 + g + 8 * r;
        float tmax = -CUDART_INF_F;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = n0 + nt * 8 + 2 * t + e;
            float x = sc[mt][nt][2 * r + e] * scale2;
            if (all_visible || (((kbits >> (nt * 2 + e)) & 1u) && row_sees(p, s, i, j))) {
              if (biased) x += bias2<T>(p, b, h, i, j);
            } else {
              x = -CUDART_INF_F;
            }
            sc[mt][nt][2 * r + e] = x;
            tmax = fmaxf(tmax, x);
          }
        }
        const float new_max = fmaxf(row_max[mt][r], quad_max(tmax));
        const float base_max = new_max == -CUDART_INF_F ? 0.f : new_max;  // all masked so far: no inf - inf
        const float alpha = exp2f(row_max[mt][r] - base_max);
        row_max[mt][r] = new_max;
        row_sum[mt][r] *= alpha;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          o[mt][dt][2 * r] *= alpha;
          o[mt][dt][2 * r + 1] *= alpha;
        }
        uint32_t keep[2] = {0xffu, 0xffu};  // slots of the two 32-key Philox groups of this row
        if (drop.on) {
          const uint64_t row = drop_row(p, b, h, i);
          keep[0] = drop.group(attn_drop_group(row, gpr, n0 + 2 * t));
          keep[1] = drop.group(attn_drop_group(row, gpr, n0 + 32 + 2 * t));
        }
        float part = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pr = exp2f(sc[mt][nt][2 * r + e] - base_max);
            part += pr;  // the row sum uses undropped probabilities; P·V the dropped ones
            const bool kept = (keep[nt >> 2] >> ((nt & 3) * 2 + e)) & 1u;
            sc[mt][nt][2 * r + e] = kept ? pr : 0.f;  // 1/(1-p) is applied to O at the end
          }
        }
        row_sum[mt][r] += quad_sum(part);
      }
    }

    // O += P V: P from the accumulators (k = keys); V stored [key][d] → B by ldmatrix.trans
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) frag_a_from_acc<T>(a[mt], sc[mt][2 * kk], sc[mt][2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t f[4], b0[2], b1[2];
        ldsm_x4_trans(f, TileKV::at(lv_b + stage, kk * 16, dp * 2));
        split_b(f, b0, b1);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma16816<T>(o[mt][2 * dp], a[mt], b0);
          mma16816<T>(o[mt][2 * dp + 1], a[mt], b1);
        }
      }
    }
  }

  // Epilogue: O / row_sum through this warp's own rows of sQ, then 16-byte coalesced stores.
  cp_async_wait<0>();
  __syncthreads();  // Q landed even without key tiles; no warp reads another warp's sQ rows after this
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int rl = w0 + mt * 16 + g + 8 * r, i = m0 + rl;
      const float inv = row_sum[mt][r] > 0.f ? drop.scale / row_sum[mt][r] : 0.f;  // no visible key → zeros
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        st_shared_b32(sQ.pair(rl, dt * 8 + 2 * t), pack2f<T>(o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv));
      }
      if (t == 0 && i < s.lq) {
        // +inf marks "no visible key": the backward then gives these rows zero probability
        p.lse[drop_row(p, b, h, i)] =
            row_sum[mt][r] > 0.f ? (row_max[mt][r] + __log2f(row_sum[mt][r])) * kLn2 : CUDART_INF_F;
      }
    }
  }
  __syncwarp();
  store_rows_warp(sQ, w0, kRows, static_cast<T*>(p.out) + (s.q0 + m0) * q_ld + h * D, q_ld, s.lq - m0, lane);
}

// Head dim → (warps, m16 tiles per warp): 128-row query blocks everywhere; 4 warps x 32 rows
// where the registers allow it (K and V fragments serve two m-tiles), 8 warps x 16 rows at D=128.
template <int D>
struct FwdShape;
template <>
struct FwdShape<32> {
  static constexpr int kWarps = 4, kMT = 2;
};
template <>
struct FwdShape<64> {
  static constexpr int kWarps = 4, kMT = 2;
};
template <>
struct FwdShape<128> {
  static constexpr int kWarps = 8, kMT = 1;
};

template <typename T, int D>
cudaError_t launch_fwd(const PtftAttnArgs& p, cudaStream_t stream) {
  using Shape = FwdShape<D>;
  using Cfg = FwdCfg<D, Shape::kWarps, Shape::kMT>;
  auto kernel = attention_fwd_cuda<T, D, Shape::kWarps, Shape::kMT>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.max_q, Cfg::kM)), p.hq, p.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace
}  // namespace attn
}  // namespace ptft

bool ptft_attention_supports_head_dim(int head_dim) { return head_dim == 32 || head_dim == 64 || head_dim == 128; }
int ptft_attention_max_buckets() { return ptft::attn::kMaxBuckets; }

cudaError_t ptft_attention_fwd(const PtftAttnArgs& args, cudaStream_t stream) {
  if (!ptft::attn::valid(args)) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(args.dtype, {
    switch (args.head_dim) {
      case 32:
        return ptft::attn::launch_fwd<T, 32>(args, stream);
      case 64:
        return ptft::attn::launch_fwd<T, 64>(args, stream);
      default:
        return ptft::attn::launch_fwd<T, 128>(args, stream);
    }
  })
  return cudaSuccess;
}

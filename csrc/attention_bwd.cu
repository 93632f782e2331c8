// Flash attention backward (FlashAttention-2 schedule): the dsum row term, then one block per
// (kN keys, kv head, sequence) that loops over the query heads of its GQA group and over 64-query
// tiles. Per tile:
//   1. S = Q Kᵀ and dP = dO Vᵀ, warps tiled 4 (queries) x kN/64 (keys) with 16 x 64 each — the
//      forward's thread layout, so dropout draws the same Philox groups; P = exp2(S - lse),
//      dS = P (dP·Z - dsum); P·Z and dS go to shared memory (Z = keep / (1 - p)).
//   2. dV += (P·Z)ᵀ dO and dK += dSᵀ Q, warp w owning keys 16w..16w+15 (registers across all
//      tiles and heads): A by ldmatrix.trans of P/dS, B by ldmatrix.trans of dO/Q.
//   3. dQ = dS K for 16 queries x D/(kN/64) columns per warp, added to an fp32 buffer: one RED per
//      4 floats on sm_90 (red.global.add.v4.f32 after one quad shuffle), per float on sm_80.
// dBias (when asked) is written element-wise to a full fp32 buffer; the T5 table gradient is
// summed in shared memory (run-length per thread, then per block and head) before one global
// atomic per bucket and head.
#include "attention_common.cuh"

namespace ptft {
namespace attn {
namespace {

// dsum[b, h, i] = sum_d dout * out (the softmax-backward row term); D / 8 lanes per row, 16 bytes each.
template <typename T, int D>
__global__ void __launch_bounds__(128) attention_bwd_dsum_cuda(const PtftAttnArgs p) {
  constexpr int kLanes = D / 8, kRowsPerBlock = 128 / kLanes;
  const int b = blockIdx.z, h = blockIdx.y;
  const int i = blockIdx.x * kRowsPerBlock + static_cast<int>(threadIdx.x) / kLanes, c = threadIdx.x % kLanes;
  const SeqInfo s = seq_info(p, b);
  float acc = 0.f;
  if (i < s.lq) {
    const int64_t off = ((s.q0 + i) * p.hq + h) * D + c * 8;
    const uint4 ov = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.out) + off);
    const uint4 dv = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.dout) + off);
    const T* o8 = reinterpret_cast<const T*>(&ov);
    const T* d8 = reinterpret_cast<const T*>(&dv);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc += to_f(o8[e]) * to_f(d8[e]);
  }
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (c == 0 && i < s.lq) p.dsum[drop_row(p, b, h, i)] = acc;
}

template <int D, int kN, int kStages>
struct BwdCfg {
  static constexpr int kM = 64;                    // queries per tile
  static constexpr int kWarps = 8, kThreads = 256;
  static constexpr int kNW1 = kN / 2;              // phase 1: keys per warp (warps 4 x 2)
  static constexpr int kPasses = kNW1 / 32;        // ... in passes of 32 keys
  static constexpr int kKR = kN / 16;              // phase 2: 16-key row blocks ...
  static constexpr int kDW = D * kKR / kWarps;     // ... x kWarps / kKR column parts of kDW
  static constexpr int kDQ = D / 2;                // phase 3: dQ columns per warp (warps 4 x 2)
  static_assert(kNW1 % 32 == 0 && kDW >= 16 && kDQ >= 16, "tile shape");
  using TileKV = Tile<kN, D>;
  using TileQ = Tile<kM, D>;
  using TileP = Tile<kM, kN>;
  static constexpr int kOffV = TileKV::kBytes, kOffQ = 2 * TileKV::kBytes;
  static constexpr int kOffDO = kOffQ + kStages * TileQ::kBytes;
  static constexpr int kOffP = kOffDO + kStages * TileQ::kBytes;
  static constexpr int kOffDS = kOffP + TileP::kBytes;
  static constexpr int kOffStats = kOffDS + TileP::kBytes;           // lse, dsum: [kStages][kM] fp32 each
  static constexpr int kOffTable = kOffStats + 2 * kStages * kM * 4;  // T5 gradient: kMaxBuckets fp32
  static constexpr int kSmem = kOffTable + kMaxBuckets * 4 + 128;    // + alignment
};

// Adds a quad's dQ accumulator tile (16 rows x 8 columns, C layout) to the fp32 buffer at
// row0/col0 (row stride ld); rows >= valid are skipped.
__device__ __forceinline__ void add_dq_tile(float* g, int64_t ld, int valid, const float (&c)[4], float scale, int lane) {
  const int gr = lane >> 2, t = lane & 3;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // even t: row g, columns 2t..2t+3; odd t: row g+8, columns 2t-2..2t+1 (one shuffle of a pair)
  const bool odd = t & 1;
  const float s0 = odd ? c[0] : c[2], s1 = odd ? c[1] : c[3];
  const float r0 = __shfl_xor_sync(0xffffffffu, s0, 1), r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
  const int row = odd ? gr + 8 : gr, col = odd ? 2 * t - 2 : 2 * t;
  const float4 v = odd ? make_float4(r0 * scale, r1 * scale, c[2] * scale, c[3] * scale)
                       : make_float4(c[0] * scale, c[1] * scale, r0 * scale, r1 * scale);
  if (row < valid) atomicAdd(reinterpret_cast<float4*>(g + row * ld + col), v);
#else
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (gr + 8 * r < valid) {
      atomicAdd(g + (gr + 8 * r) * ld + 2 * t, c[2 * r] * scale);
      atomicAdd(g + (gr + 8 * r) * ld + 2 * t + 1, c[2 * r + 1] * scale);
    }
  }
#endif
}

template <typename T, int D, int kN, int kStages>
__global__ void __launch_bounds__(256) attention_bwd_cuda(const PtftAttnArgs p) {
  using Cfg = BwdCfg<D, kN, kStages>;
  using TileQ = typename Cfg::TileQ;
  using TileP = typename Cfg::TileP;
  constexpr int kM = Cfg::kM, kThreads = Cfg::kThreads, kDQ = Cfg::kDQ, kDW = Cfg::kDW, kKR = Cfg::kKR;
  using TileKV = typename Cfg::TileKV;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const uint32_t base = align128(smem_addr(smem_raw));
  unsigned char* smem = smem_raw + (base - smem_addr(smem_raw));
  float* s_stats = reinterpret_cast<float*>(smem + Cfg::kOffStats);  // lse [kStages][kM], then dsum
  float* s_table = reinterpret_cast<float*>(smem + Cfg::kOffTable);

  const int b = blockIdx.z, hk = blockIdx.y, n0 = blockIdx.x * kN;
  const SeqInfo s = seq_info(p, b);
  if (n0 >= s.lk) return;
  const int group = p.hq / p.hkv;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm = warp & 3, wn = warp >> 2;  // phases 1 and 3: 16-query row wm, key half / column half wn
  const int kr = warp % kKR, dpart = warp / kKR;  // phase 2: 16-key row block, column part

  const TileKV sK{base}, sV{base + Cfg::kOffV};
  auto sQ = [&](int st) { return TileQ{base + Cfg::kOffQ + st * TileQ::kBytes}; };
  auto sdO = [&](int st) { return TileQ{base + Cfg::kOffDO + st * TileQ::kBytes}; };
  const TileP sP{base + Cfg::kOffP}, sdS{base + Cfg::kOffDS};

  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  const int64_t q_ld = static_cast<int64_t>(p.hq) * D, k_ld = static_cast<int64_t>(p.hkv) * D;
  sK.template load_async<kThreads>(static_cast<const T*>(p.k) + (s.k0 + n0) * k_ld + hk * D, k_ld, s.lk - n0);
  sV.template load_async<kThreads>(static_cast<const T*>(p.v) + (s.k0 + n0) * k_ld + hk * D, k_ld, s.lk - n0);

  const int m_begin = attn_bwd_query_begin(n0, kM, s.lq, s.lk, p.causal, s.prefix);
  const int n_mt = m_begin < s.lq ? (s.lq - m_begin + kM - 1) / kM : 0;
  const int n_it = group * n_mt;
  // Iteration it: query head hk * group + it / n_mt, query tile m_begin + (it % n_mt) * kM.
  auto issue = [&](int it) {
    const int h = hk * group + it / n_mt, m0 = m_begin + (it % n_mt) * kM, st = it % kStages;
    const int64_t off = (s.q0 + m0) * q_ld + h * D;
    sQ(st).template load_async<kThreads>(q + off, q_ld, s.lq - m0);
    sdO(st).template load_async<kThreads>(dout + off, q_ld, s.lq - m0);
    const uint64_t row0 = drop_row(p, b, h, m0);
    for (int r = threadIdx.x; r < kM; r += kThreads) {
      const bool in = m0 + r < s.lq;  // rows past the sequence read as 0 (their P and dS are masked)
      cp_async4(smem_addr(s_stats + st * kM + r), p.lse + row0 + (in ? r : 0), in);
      cp_async4(smem_addr(s_stats + (kStages + st) * kM + r), p.dsum + row0 + (in ? r : 0), in);
    }
  };
  if (kStages == 2 && n_it > 0) issue(0);
  cp_async_commit();
  const bool rel_grad = p.drel_table != nullptr;
  if (rel_grad) {
    for (int i = threadIdx.x; i < kMaxBuckets; i += kThreads) s_table[i] = 0.f;
  }

  const float scale2 = p.softmax_scale * kLog2e;
  const bool biased = has_bias(p);
  const int kw = wn * Cfg::kNW1;  // phase 1: this warp's first key in the block
  // ldmatrix lane bases (tile_layout.cuh); Q/dO ones are for stage 0
  const uint32_t l1_q = sQ(0).lane_rows16(lane, wm * 16, 0), l1_o = sdO(0).lane_rows16(lane, wm * 16, 0);
  const uint32_t l1_k = sK.lane_rows8x2(lane, kw, 0), l1_v = sV.lane_rows8x2(lane, kw, 0);
  const uint32_t l2_p = sP.lane_rows8x2(lane, 0, kr * 2), l2_ds = sdS.lane_rows8x2(lane, 0, kr * 2);
  const uint32_t l2_o = sdO(0).lane_rows16(lane, 0, dpart * kDW / 8), l2_q = sQ(0).lane_rows16(lane, 0, dpart * kDW / 8);
  const uint32_t l3_ds = sdS.lane_rows16(lane, wm * 16, 0), l3_k = sK.lane_rows16(lane, 0, (wn * kDQ) / 8);

  float dk[kDW / 8][4], dv[kDW / 8][4];  // keys 16 kr .. +15, columns dpart * kDW ..
#pragma unroll
  for (int dt = 0; dt < kDW / 8; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.f;
  }

  for (int it = 0; it < n_it; ++it) {
    if (kStages == 1) {
      __syncthreads();  // the previous tile is fully consumed
      issue(it);
      cp_async_commit();
    }
    cp_async_wait<0>();
    __syncthreads();  // tile `it` visible to all; tile it - 1 (the other stage) fully consumed
    if (kStages == 2) {
      if (it + 1 < n_it) issue(it + 1);
      cp_async_commit();
    }
    const int h = hk * group + it / n_mt, m0 = m_begin + (it % n_mt) * kM, st = it % kStages;
    const uint32_t stage = st * TileQ::kBytes;
    const float* s_lse = s_stats + st * kM;
    const float* s_dsum = s_stats + (kStages + st) * kM;

    // ---- phase 1: S and dP for queries m0 + 16 wm .. +15 and keys n0 + kw .. + kNW1 - 1, in
    // passes of 32 keys (one Philox group per row and pass) to bound the live accumulators
#pragma unroll 1
    for (int half = 0; half < Cfg::kPasses; ++half) {
      const int kb = n0 + kw + 32 * half;
      DropState drop;  // (re)read here: nothing of it stays live across the tile loop
      drop.init(p.drop);
      const uint64_t gpr = attn_groups_per_row(p.max_k);
      // dropout keep bits, drawn before the accumulators are live: byte r = row g + 8r
      uint32_t keep = 0xffffu;
      if (drop.on) {
        keep = drop.group(attn_drop_group(drop_row(p, b, h, m0 + wm * 16 + g), gpr, kb + 2 * t)) |
               drop.group(attn_drop_group(drop_row(p, b, h, m0 + wm * 16 + g + 8), gpr, kb + 2 * t)) << 8;
      }
      float sc[4][4], dp[4][4];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[nt][e] = dp[nt][e] = 0.f;
      }
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t aq[4], ao[4];
        ldsm_x4(aq, TileQ::at(l1_q + stage, 0, kk * 2));
        ldsm_x4(ao, TileQ::at(l1_o + stage, 0, kk * 2));
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          uint32_t f[4], b0[2], b1[2];
          ldsm_x4(f, TileKV::at(l1_k, np * 16, kk * 2) + half * (32 * TileKV::C * 16));
          split_b(f, b0, b1);
          mma16816<T>(sc[2 * np], aq, b0);
          mma16816<T>(sc[2 * np + 1], aq, b1);
          ldsm_x4(f, TileKV::at(l1_v, np * 16, kk * 2) + half * (32 * TileKV::C * 16));
          split_b(f, b0, b1);
          mma16816<T>(dp[2 * np], ao, b0);
          mma16816<T>(dp[2 * np + 1], ao, b1);
        }
      }
      const bool all_visible =
          p.key_padding_mask == nullptr && attn_tile_all_visible(m0, kM, kb, 32, s.lq, s.lk, p.causal, s.prefix);
      const uint32_t kbits = all_visible ? 0xffu : key_bits<4>(p, s, b, kb, t);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int il = wm * 16 + g + 8 * r, i = m0 + il;
        const float lse2 = s_lse[il] * kLog2e, dsum = s_dsum[il];
        int run_bucket = -1;  // T5 gradient: run-length sum over the row's keys (buckets change rarely)
        float run_sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = kb + nt * 8 + 2 * t + e;
            float pr = 0.f, ds = 0.f;
            if (all_visible || (((kbits >> (nt * 2 + e)) & 1u) && row_sees(p, s, i, j))) {
              float x = sc[nt][2 * r + e] * scale2;
              if (biased) x += bias2<T>(p, b, h, i, j);
              pr = exp2f(x - lse2);
              const float z = ((keep >> (8 * r + nt * 2 + e)) & 1u) ? drop.scale : 0.f;
              ds = pr * (dp[nt][2 * r + e] * z - dsum);
              pr *= z;
              if (p.dbias_full != nullptr) p.dbias_full[drop_row(p, b, h, i) * p.max_k + j] = ds;
              if (rel_grad) {
                const int bucket = rel_bucket(p, i, j);
                if (bucket != run_bucket) {
                  if (run_bucket >= 0) atomicAdd(s_table + run_bucket, run_sum);
                  run_bucket = bucket;
                  run_sum = 0.f;
                }
                run_sum += ds;
              }
            }
            sc[nt][2 * r + e] = pr;
            dp[nt][2 * r + e] = ds;
          }
        }
        if (run_bucket >= 0) atomicAdd(s_table + run_bucket, run_sum);
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int il = wm * 16 + g + 8 * r, kl = kw + 32 * half + nt * 8 + 2 * t;
          st_shared_b32(sP.pair(il, kl), pack2f<T>(sc[nt][2 * r], sc[nt][2 * r + 1]));
          st_shared_b32(sdS.pair(il, kl), pack2f<T>(dp[nt][2 * r], dp[nt][2 * r + 1]));
        }
      }
    }
    __syncthreads();  // P and dS complete
    if (rel_grad && (it + 1 == n_it || (it + 1) / n_mt != it / n_mt)) {  // last tile of head h
      for (int bk = threadIdx.x; bk < p.num_buckets; bk += kThreads) {
        const float v = s_table[bk];
        if (v != 0.f) atomicAdd(p.drel_table + bk * p.hq + h, v);
        s_table[bk] = 0.f;  // next written after the next iteration's first barrier
      }
    }

    // ---- phase 2: dV += (P·Z)ᵀ dO, dK += dSᵀ Q for keys 16 kr .. +15 and columns dpart * kDW ..
    // (k = the tile's queries)
#pragma unroll
    for (int kk = 0; kk < kM / 16; ++kk) {
      uint32_t ap[4], ad[4];
      ldsm_x4_trans(ap, TileP::at(l2_p, kk * 16, 0));
      ldsm_x4_trans(ad, TileP::at(l2_ds, kk * 16, 0));
#pragma unroll
      for (int dq = 0; dq < kDW / 16; ++dq) {
        uint32_t f[4], b0[2], b1[2];
        ldsm_x4_trans(f, TileQ::at(l2_o + stage, kk * 16, dq * 2));
        split_b(f, b0, b1);
        mma16816<T>(dv[2 * dq], ap, b0);
        mma16816<T>(dv[2 * dq + 1], ap, b1);
        ldsm_x4_trans(f, TileQ::at(l2_q + stage, kk * 16, dq * 2));
        split_b(f, b0, b1);
        mma16816<T>(dk[2 * dq], ad, b0);
        mma16816<T>(dk[2 * dq + 1], ad, b1);
      }
    }

    // ---- phase 3: dQ (16 queries of row wm, columns wn * kDQ ..) = dS K over the block's keys
    float dqa[kDQ / 8][4];
#pragma unroll
    for (int dt = 0; dt < kDQ / 8; ++dt) dqa[dt][0] = dqa[dt][1] = dqa[dt][2] = dqa[dt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      uint32_t a[4];
      ldsm_x4(a, TileP::at(l3_ds, 0, kk * 2));
#pragma unroll
      for (int dq = 0; dq < kDQ / 16; ++dq) {
        uint32_t f[4], b0[2], b1[2];
        ldsm_x4_trans(f, TileKV::at(l3_k, kk * 16, dq * 2));
        split_b(f, b0, b1);
        mma16816<T>(dqa[2 * dq], a, b0);
        mma16816<T>(dqa[2 * dq + 1], a, b1);
      }
    }
    float* dq_rows = p.dq_acc + (s.q0 + m0 + wm * 16) * q_ld + h * D + wn * kDQ;
#pragma unroll
    for (int dt = 0; dt < kDQ / 8; ++dt) {
      add_dq_tile(dq_rows + dt * 8, q_ld, s.lq - m0 - wm * 16, dqa[dt], p.softmax_scale, lane);
    }
  }

  // Epilogue: dK (x scale) and dV through sK / sV, then 16-byte stores of the whole tile.
  cp_async_wait<0>();
  __syncthreads();  // every warp is done reading sK / sV
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int kl = kr * 16 + g + 8 * r;
#pragma unroll
    for (int dt = 0; dt < kDW / 8; ++dt) {
      const int col = dpart * kDW + dt * 8 + 2 * t;
      st_shared_b32(sK.pair(kl, col), pack2f<T>(dk[dt][2 * r] * p.softmax_scale, dk[dt][2 * r + 1] * p.softmax_scale));
      st_shared_b32(sV.pair(kl, col), pack2f<T>(dv[dt][2 * r], dv[dt][2 * r + 1]));
    }
  }
  __syncthreads();
  const int64_t off = (s.k0 + n0) * k_ld + hk * D;
  store_rows_block<kThreads>(sK, static_cast<T*>(p.dk) + off, k_ld, s.lk - n0);
  store_rows_block<kThreads>(sV, static_cast<T*>(p.dv) + off, k_ld, s.lk - n0);
}

int max_smem_optin() {
  int device = 0, smem = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) return 0;
  return smem;
}

template <typename T, int D, int kN, int kStages>
cudaError_t launch_bwd_cfg(const PtftAttnArgs& p, cudaStream_t stream) {
  using Cfg = BwdCfg<D, kN, kStages>;
  auto kernel = attention_bwd_cuda<T, D, kN, kStages>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.max_k, kN)), p.hkv, p.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t launch_bwd(const PtftAttnArgs& p, cudaStream_t stream) {
  constexpr int kDsumRows = 128 / (D / 8);
  const dim3 grid_dsum(static_cast<unsigned>(ceil_div(p.max_q, kDsumRows)), p.hq, p.batch);
  attention_bwd_dsum_cuda<T, D><<<grid_dsum, 128, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // 8 warps, Q/dO double-buffered; 128-key blocks, but 64 at D = 128, where 128 keys x 128 columns
  // of dK and dV per 8 warps (128 registers each) spill. D = 128 needs 114 KiB of shared memory
  // (sm_80, sm_90): GPUs with less (sm_86/89: 99 KiB) run one Q/dO stage.
  if constexpr (D < 128) {
    return launch_bwd_cfg<T, D, 128, 2>(p, stream);
  } else {
    if (max_smem_optin() >= BwdCfg<D, 64, 2>::kSmem) return launch_bwd_cfg<T, D, 64, 2>(p, stream);
    return launch_bwd_cfg<T, D, 64, 1>(p, stream);
  }
}

}  // namespace
}  // namespace attn
}  // namespace ptft

cudaError_t ptft_attention_bwd(const PtftAttnArgs& args, cudaStream_t stream) {
  if (!ptft::attn::valid(args)) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(args.dtype, {
    switch (args.head_dim) {
      case 32:
        return ptft::attn::launch_bwd<T, 32>(args, stream);
      case 64:
        return ptft::attn::launch_bwd<T, 64>(args, stream);
      default:
        return ptft::attn::launch_bwd<T, 128>(args, stream);
    }
  })
  return cudaSuccess;
}

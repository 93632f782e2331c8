// Masked-token linear cross-entropy: loss of hidden @ weightᵀ + bias against labels over the
// labeled rows only, without materializing the (N, V) logits and without host synchronization.
//
// 1. ptft_linear_cross_entropy_compact: one block scans the labels and writes the ascending indices of labeled
//    rows plus their count to device memory.
// 2. ptft_linear_cross_entropy_fwd: (64 rows x 2048 vocab) blocks compute logits tiles with tensor cores
//    (rows gathered through the index; blocks past the device-side count exit at once) and
//    reduce them to per-row online-softmax partials (max, sum exp, sum z, label logit); a row
//    kernel combines the partials into lse and the loss (label smoothing, z-loss), and one block
//    reduces the losses (deterministic order) — the mean divides by the device-side count.
// 3. ptft_linear_cross_entropy_dlogits: recomputes a logits block and writes dloss/dlogits for it (unscaled by
//    the scalar loss gradient for sum/mean) in the 16-bit dtype, rounded once from fp32, plus fp32
//    column sums per row block for dbias; the binding multiplies it into dhidden and dweight with
//    two cuBLAS GEMMs (fp32 accumulation) and applies that scalar. The one rounding of dlogits
//    keeps the gradients within the design's rule for sum/mean (tests/csrc/
//    test_linear_cross_entropy_dlogits_numerics.py: at most 1.8x PyTorch's own error). For reduction none,
//    where PyTorch's low-precision gradients carry one rounding only, it reaches 2.5-3.3x: there
//    the residual d - round(d) goes out too and two more GEMMs add it (4 in all, as before).
#include "gemm_nt.cuh"

namespace ptft {
namespace {

constexpr int kVocabTiles = 32;                       // 64-column tiles per forward block
constexpr int64_t kVocabChunk = kGemmBN * kVocabTiles;  // 2048 vocab entries
constexpr int64_t kRowChunk = 1 << 16;                // rows per forward launch (workspace bound)
constexpr int kScanThreads = 1024;

__global__ void __launch_bounds__(kScanThreads)
    linear_cross_entropy_compact_cuda(const int64_t* __restrict__ labels, int64_t n, int64_t ignore_index,
                                      int32_t* __restrict__ rows, int32_t* __restrict__ count) {
  __shared__ int warp_off[32];
  __shared__ int total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int base = 0;
  for (int64_t start = 0; start < n; start += kScanThreads) {
    const int64_t i = start + threadIdx.x;
    const bool flag = i < n && labels[i] != ignore_index;
    const unsigned ballot = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) warp_off[warp] = __popc(ballot);
    __syncthreads();
    if (warp == 0) {  // exclusive scan of the 32 warp counts
      const int c = warp_off[lane];
      int incl = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
      }
      warp_off[lane] = incl - c;
      if (lane == 31) total = incl;
    }
    __syncthreads();
    if (flag) rows[base + warp_off[warp] + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int32_t>(i);
    base += total;
    __syncthreads();  // warp_off/total are rewritten next round
  }
  if (threadIdx.x == 0) *count = base;
}

struct RowStats {
  float m, s, zsum, zlab;  // running max, sum exp(z - m), sum z, label logit
};

__device__ __forceinline__ void merge(RowStats& a, const RowStats& b) {
  const float m = fmaxf(a.m, b.m);
  if (m != -CUDART_INF_F) a.s = a.s * __expf(a.m - m) + b.s * __expf(b.m - m);
  a.m = m;
  a.zsum += b.zsum;
  a.zlab += b.zlab;
}

template <typename T>
// (kGemmThreads, 1): without the minimum, ptxas picks 80 registers for sm_80 and spills 16 bytes.
__global__ void __launch_bounds__(kGemmThreads, 1)
    linear_cross_entropy_fwd_stats_cuda(Operand<T> A, Operand<T> B, const T* __restrict__ bias,
                                        const int64_t* __restrict__ labels, const int32_t* __restrict__ rows,
                                        const int32_t* __restrict__ count, int64_t row0, int64_t nchunks,
                                        float4* __restrict__ partial) {
  __shared__ __align__(16) T sA[kGemmBM * kGemmLD];
  __shared__ __align__(16) T sB[kGemmBN * kGemmLD];
  const int64_t n_valid = *count;
  const int64_t m0 = row0 + static_cast<int64_t>(blockIdx.x) * kGemmBM;
  if (m0 >= n_valid) return;
  const int64_t vocab = B.rows, chunk = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  int64_t rc[2], lab[2];
  RowStats st[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    rc[r] = m0 + warp * 16 + g + 8 * r;
    lab[r] = rc[r] < n_valid ? labels[rows[rc[r]]] : -1;
    st[r] = {-CUDART_INF_F, 0.f, 0.f, 0.f};
  }
  float acc[8][4];
  for (int vt = 0; vt < kVocabTiles; ++vt) {
    const int64_t n0 = chunk * kVocabChunk + vt * kGemmBN;
    if (n0 >= vocab) break;
    zero_acc(acc);
    gemm_nt_tile(acc, A, m0, n_valid, B, n0, vocab, sA, sB);
    RowStats tile[2] = {{-CUDART_INF_F, 0.f, 0.f, 0.f}, {-CUDART_INF_F, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const int64_t col = n0 + nt * 8 + 2 * t + (e & 1);
        if (col >= vocab) continue;
        const float z = acc[nt][e] + (bias != nullptr ? to_f(bias[col]) : 0.f);
        acc[nt][e] = z;
        tile[r].m = fmaxf(tile[r].m, z);
        tile[r].zsum += z;
        if (col == lab[r]) tile[r].zlab += z;
      }
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t col = n0 + nt * 8 + 2 * t + (e & 1);
        if (col < vocab) tile[e >> 1].s += __expf(acc[nt][e] - tile[e >> 1].m);
      }
    }
    merge(st[0], tile[0]);
    merge(st[1], tile[1]);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // combine the 4 threads of the quad (same rows)
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      RowStats other;
      other.m = __shfl_xor_sync(0xffffffffu, st[r].m, o);
      other.s = __shfl_xor_sync(0xffffffffu, st[r].s, o);
      other.zsum = __shfl_xor_sync(0xffffffffu, st[r].zsum, o);
      other.zlab = __shfl_xor_sync(0xffffffffu, st[r].zlab, o);
      merge(st[r], other);
    }
    if (t == 0 && rc[r] < n_valid) {
      partial[(rc[r] - row0) * nchunks + chunk] = make_float4(st[r].m, st[r].s, st[r].zsum, st[r].zlab);
    }
  }
}

__global__ void linear_cross_entropy_fwd_rows_cuda(const float4* __restrict__ partial, const int32_t* __restrict__ rows,
                                                   const int32_t* __restrict__ count, int64_t row0, int64_t nrows,
                                                   int64_t nchunks, int64_t vocab, float smoothing, float z_loss,
                                                   int reduction, float* __restrict__ lse,
                                                   float* __restrict__ row_loss) {
  const int64_t rc = row0 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (rc >= row0 + nrows || rc >= *count) return;
  RowStats st = {-CUDART_INF_F, 0.f, 0.f, 0.f};
  for (int64_t c = 0; c < nchunks; ++c) {
    const float4 v = partial[(rc - row0) * nchunks + c];
    merge(st, {v.x, v.y, v.z, v.w});
  }
  const float l = st.m + __logf(st.s);
  float loss = (1.f - smoothing) * (l - st.zlab);
  if (smoothing > 0.f) loss += smoothing * (l - st.zsum / static_cast<float>(vocab));
  if (z_loss > 0.f) loss += z_loss * l * l;
  lse[rc] = l;
  row_loss[reduction == 0 ? rows[rc] : rc] = loss;
}

__global__ void __launch_bounds__(kScanThreads)
    linear_cross_entropy_reduce_cuda(const float* __restrict__ row_loss, const int32_t* __restrict__ count, bool mean,
                                     float* __restrict__ loss) {
  __shared__ float red[32];
  const int64_t n_valid = *count;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n_valid; i += blockDim.x) s += row_loss[i];
  s = block_sum(s, red);
  // mean over zero labeled rows is 0/0 = nan, as in F.cross_entropy
  if (threadIdx.x == 0) *loss = mean ? s / static_cast<float>(n_valid) : s;
}

template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    linear_cross_entropy_dlogits_cuda(Operand<T> A, Operand<T> B, const T* __restrict__ bias,
                                      const int64_t* __restrict__ labels, const int32_t* __restrict__ rows,
                                      const int32_t* __restrict__ count, const float* __restrict__ lse,
                                      const float* __restrict__ grad, int reduction, float smoothing, float z_loss,
                                      int64_t r0, int64_t nr, int64_t v0, int64_t nv, T* __restrict__ dlogits,
                                      T* __restrict__ dlogits_lo, float* __restrict__ db_part) {
  __shared__ __align__(16) T sA[kGemmBM * kGemmLD];
  __shared__ __align__(16) T sB[kGemmBN * kGemmLD];
  __shared__ float col_part[kGemmThreads / 32][kGemmBN];  // per-warp column sums of d (for db)
  const int64_t n_valid = *count;
  const int64_t m0 = r0 + static_cast<int64_t>(blockIdx.x) * kGemmBM;
  const int64_t n0 = v0 + static_cast<int64_t>(blockIdx.y) * kGemmBN;
  const int64_t vocab = B.rows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float acc[8][4];
  zero_acc(acc);
  if (m0 < n_valid) gemm_nt_tile(acc, A, m0, n_valid, B, n0, vocab, sA, sB);
  const float inv_v = 1.f / static_cast<float>(vocab);
  float col_sum[8][2] = {};  // this thread's fp32 d summed over its 2 rows, per column
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t rc = m0 + warp * 16 + g + 8 * r;
    if (rc >= r0 + nr) continue;
    const bool valid = rc < n_valid;
    float gs = 0.f, coef = 0.f, l = 0.f;
    int64_t lab = -1;
    if (valid) {
      const int64_t orig = rows[rc];
      lab = labels[orig];
      l = lse[rc];
      // sum/mean: the scalar loss gradient is applied by the caller after the GEMMs, so the
      // stored 16-bit dlogits keep full range (no underflow of tiny probabilities · 1/count)
      gs = reduction == 0 ? grad[orig] : 1.f;
      coef = 1.f + 2.f * z_loss * l;
    }
    const int64_t drow = (rc - r0) * nv;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t col = n0 + nt * 8 + 2 * t + e;
        if (col >= v0 + nv) continue;
        float d = 0.f;
        if (valid && col < vocab) {
          const float z = acc[nt][2 * r + e] + (bias != nullptr ? to_f(bias[col]) : 0.f);
          d = coef * __expf(z - l) - smoothing * inv_v - (col == lab ? 1.f - smoothing : 0.f);
          d *= gs;
        }
        const T hi = from_f<T>(d);
        dlogits[drow + col - v0] = hi;
        if (dlogits_lo != nullptr) dlogits_lo[drow + col - v0] = from_f<T>(d - to_f(hi));
        col_sum[nt][e] += d;
      }
    }
  }
  if (db_part == nullptr) return;
  // db partial of this row block: sum the 8 row groups of the warp, then the 4 warps (fixed order)
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = col_sum[nt][e];
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      v += __shfl_xor_sync(0xffffffffu, v, 8);
      v += __shfl_xor_sync(0xffffffffu, v, 16);
      if (g == 0) col_part[warp][nt * 8 + 2 * t + e] = v;
    }
  }
  __syncthreads();
  const int c = threadIdx.x;
  if (c < kGemmBN && n0 + c < v0 + nv) {
    db_part[blockIdx.x * nv + (n0 - v0) + c] = col_part[0][c] + col_part[1][c] + col_part[2][c] + col_part[3][c];
  }
}

template <typename T>
__global__ void linear_cross_entropy_gather_cuda(const T* __restrict__ hidden, const int32_t* __restrict__ rows,
                                                 const int32_t* __restrict__ count, int64_t hdim, T* __restrict__ out) {
  const int64_t rc = blockIdx.x;
  const bool valid = rc < *count;
  const T* src = valid ? hidden + static_cast<int64_t>(rows[rc]) * hdim : nullptr;
  for (int64_t c = threadIdx.x; c < hdim; c += blockDim.x) out[rc * hdim + c] = valid ? src[c] : from_f<T>(0.f);
}

template <typename T>
__global__ void linear_cross_entropy_scatter_cuda(const float* __restrict__ src, const int32_t* __restrict__ rows,
                                                  const int32_t* __restrict__ count, int64_t hdim,
                                                  T* __restrict__ dst) {
  const int64_t rc = blockIdx.x;
  if (rc >= *count) return;
  T* d = dst + static_cast<int64_t>(rows[rc]) * hdim;
  for (int64_t c = threadIdx.x; c < hdim; c += blockDim.x) d[c] = from_f<T>(src[rc * hdim + c]);
}

template <typename T>
cudaError_t fwd(const void* hidden, const void* weight, const void* bias, const int64_t* labels, const int32_t* rows,
                const int32_t* count, int64_t n, int64_t vocab, int64_t hdim, float smoothing, float z_loss,
                int reduction, float* workspace, float* lse, float* row_loss, float* loss, cudaStream_t stream) {
  const Operand<T> A = operand<T>(hidden, n, hdim, rows);
  const Operand<T> B = operand<T>(weight, vocab, hdim, nullptr);
  const int64_t nchunks = ceil_div(vocab, kVocabChunk);
  float4* partial = reinterpret_cast<float4*>(workspace);
  for (int64_t row0 = 0; row0 < n; row0 += kRowChunk) {
    const int64_t nrows = n - row0 < kRowChunk ? n - row0 : kRowChunk;
    const dim3 grid(static_cast<unsigned>(ceil_div(nrows, kGemmBM)), static_cast<unsigned>(nchunks));
    linear_cross_entropy_fwd_stats_cuda<T><<<grid, kGemmThreads, 0, stream>>>(A, B, static_cast<const T*>(bias), labels,
                                                                              rows, count, row0, nchunks, partial);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    linear_cross_entropy_fwd_rows_cuda<<<static_cast<unsigned>(ceil_div(nrows, 256)), 256, 0, stream>>>(
        partial, rows, count, row0, nrows, nchunks, vocab, smoothing, z_loss, reduction, lse, row_loss);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (reduction != 0) {
    linear_cross_entropy_reduce_cuda<<<1, kScanThreads, 0, stream>>>(row_loss, count, reduction == 2, loss);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t dlogits(const void* hidden, const void* weight, const void* bias, const int64_t* labels,
                    const int32_t* rows, const int32_t* count, const float* lse, const float* grad, int reduction,
                    int64_t n, int64_t vocab, int64_t hdim, float smoothing, float z_loss, int64_t r0, int64_t nr,
                    int64_t v0, int64_t nv, void* d, void* d_lo, float* db_part, cudaStream_t stream) {
  const Operand<T> A = operand<T>(hidden, n, hdim, rows);
  const Operand<T> B = operand<T>(weight, vocab, hdim, nullptr);
  const dim3 grid(static_cast<unsigned>(ceil_div(nr, kGemmBM)), static_cast<unsigned>(ceil_div(nv, kGemmBN)));
  linear_cross_entropy_dlogits_cuda<T><<<grid, kGemmThreads, 0, stream>>>(
      A, B, static_cast<const T*>(bias), labels, rows, count, lse, grad, reduction, smoothing, z_loss, r0, nr, v0, nv,
      static_cast<T*>(d), static_cast<T*>(d_lo), db_part);
  return cudaGetLastError();
}

}  // namespace
}  // namespace ptft

cudaError_t ptft_linear_cross_entropy_compact(const int64_t* labels, int64_t n, int64_t ignore_index, int32_t* rows,
                                              int32_t* count, cudaStream_t stream) {
  if (n < 1 || n > 0x7fffffff) return cudaErrorInvalidValue;
  ptft::linear_cross_entropy_compact_cuda<<<1, ptft::kScanThreads, 0, stream>>>(labels, n, ignore_index, rows, count);
  return cudaGetLastError();
}

int64_t ptft_linear_cross_entropy_fwd_workspace(int64_t n, int64_t vocab) {
  const int64_t rows = n < ptft::kRowChunk ? n : ptft::kRowChunk;
  return rows * ptft::ceil_div(vocab, ptft::kVocabChunk) * 4;
}

cudaError_t ptft_linear_cross_entropy_fwd(PtftDtype dtype, const void* hidden, const void* weight, const void* bias,
                                          const int64_t* labels, const int32_t* rows, const int32_t* count, int64_t n,
                                          int64_t vocab, int64_t hidden_dim, float label_smoothing, float z_loss,
                                          int reduction, float* workspace, float* lse, float* row_loss, float* loss,
                                          cudaStream_t stream) {
  if (n < 1 || vocab < 1 || hidden_dim < 1 || reduction < 0 || reduction > 2) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(dtype, {
    return ptft::fwd<T>(hidden, weight, bias, labels, rows, count, n, vocab, hidden_dim, label_smoothing, z_loss,
                        reduction, workspace, lse, row_loss, loss, stream);
  })
  return cudaSuccess;
}

cudaError_t ptft_linear_cross_entropy_dlogits(PtftDtype dtype, const void* hidden, const void* weight, const void* bias,
                                              const int64_t* labels, const int32_t* rows, const int32_t* count,
                                              const float* lse, const float* grad, int reduction, int64_t n,
                                              int64_t vocab, int64_t hidden_dim, float label_smoothing, float z_loss,
                                              int64_t r0, int64_t nr, int64_t v0, int64_t nv, void* dlogits,
                                              void* dlogits_lo, float* db_part, cudaStream_t stream) {
  if (nr < 1 || nv < 1 || r0 + nr > n || v0 + nv > vocab) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(dtype, {
    return ptft::dlogits<T>(hidden, weight, bias, labels, rows, count, lse, grad, reduction, n, vocab, hidden_dim,
                            label_smoothing, z_loss, r0, nr, v0, nv, dlogits, dlogits_lo, db_part, stream);
  })
  return cudaSuccess;
}

cudaError_t ptft_linear_cross_entropy_gather_rows(PtftDtype dtype, const void* hidden, const int32_t* rows,
                                                  const int32_t* count, int64_t n, int64_t hidden_dim, void* out,
                                                  cudaStream_t stream) {
  if (n < 1 || n > 0x7fffffff) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(dtype, {
    ptft::linear_cross_entropy_gather_cuda<T><<<static_cast<unsigned>(n), 256, 0, stream>>>(
        static_cast<const T*>(hidden), rows, count, hidden_dim, static_cast<T*>(out));
  })
  return cudaGetLastError();
}

cudaError_t ptft_linear_cross_entropy_scatter_rows(PtftDtype dtype, const float* src, const int32_t* rows,
                                                   const int32_t* count, int64_t n, int64_t hidden_dim, void* dst,
                                                   cudaStream_t stream) {
  if (n < 1 || n > 0x7fffffff) return cudaErrorInvalidValue;
  PTFT_DISPATCH_HALF(dtype, {
    ptft::linear_cross_entropy_scatter_cuda<T>
        <<<static_cast<unsigned>(n), 256, 0, stream>>>(src, rows, count, hidden_dim, static_cast<T*>(dst));
  })
  return cudaGetLastError();
}

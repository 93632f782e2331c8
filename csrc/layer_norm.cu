// Layer norm / RMS norm with fused dropout + residual add, forward and backward.
//
// Forward: one block per row; the row h = dropout(x) + residual is staged once in shared memory
// (fp32), statistics use two passes over it (exact mean, then centred variance).
// Backward: a fixed grid of blocks strides over rows; each block keeps its own fp32 partial sums
// of dweight/dbias in a workspace row, reduced by a second deterministic kernel.
#include "common.cuh"

namespace ptft {
namespace {

constexpr int kLnThreads = 256;
constexpr int64_t kLnMaxHidden = 32768;  // 128 KiB of fp32 row in shared memory

template <typename T, typename W>
__global__ void __launch_bounds__(kLnThreads)
    layer_norm_fwd_cuda(const T* __restrict__ x, const T* __restrict__ residual, const W* __restrict__ weight,
                        const W* __restrict__ bias, T* __restrict__ y, T* __restrict__ h_out,
                        float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t hidden, float eps,
                        bool rms, PtftDropout drop_args) {
  extern __shared__ float row[];  // (hidden,)
  __shared__ float red[32];
  DropState drop;
  drop.init(drop_args);
  const int64_t r = blockIdx.x;
  const int64_t base = r * hidden;
  float sum = 0.f;
  // 8 consecutive columns per thread and step: one Philox call decides all 8 (philox.cuh)
  for (int64_t c0 = threadIdx.x * 8; c0 < hidden; c0 += blockDim.x * 8) {
    const uint32_t keep = drop.keep8(base + c0);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t c = c0 + i;
      if (c < hidden) {
        float v = to_f(x[base + c]);
        if (drop.on) v = round_to<T>(v * drop.factor(keep, i));
        if (residual != nullptr) v = round_to<T>(v + to_f(residual[base + c]));
        row[c] = v;
        if (h_out != nullptr) h_out[base + c] = from_f<T>(v);
        sum += v;
      }
    }
  }
  const float mean = rms ? 0.f : block_sum(sum, red) / static_cast<float>(hidden);
  float sq = 0.f;
  for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) {
    const float d = row[c] - mean;
    sq += d * d;
  }
  const float var = block_sum(sq, red) / static_cast<float>(hidden);
  const float rstd = rsqrtf(var + eps);
  for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) {
    float v = (row[c] - mean) * rstd;
    if (weight != nullptr) v *= to_f(weight[c]);
    if (bias != nullptr) v += to_f(bias[c]);
    y[base + c] = from_f<T>(v);
  }
  if (threadIdx.x == 0) {
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

template <typename T, typename W>
__global__ void __launch_bounds__(kLnThreads)
    layer_norm_bwd_cuda(const T* __restrict__ dy, const T* __restrict__ dh_extra, const T* __restrict__ h,
                        const W* __restrict__ weight, const float* __restrict__ mean_in,
                        const float* __restrict__ rstd_in, T* __restrict__ dx, T* __restrict__ dresidual,
                        float* __restrict__ dw_part, float* __restrict__ db_part, int64_t rows, int64_t hidden,
                        bool rms, PtftDropout drop_args) {
  __shared__ float red[32];
  DropState drop;
  drop.init(drop_args);
  const float inv_h = 1.f / static_cast<float>(hidden);
  float* dwp = dw_part != nullptr ? dw_part + blockIdx.x * hidden : nullptr;
  float* dbp = db_part != nullptr ? db_part + blockIdx.x * hidden : nullptr;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * hidden;
    const float mean = mean_in[r], rstd = rstd_in[r];
    float s_g = 0.f, s_gx = 0.f;  // sum(g), sum(g * xhat) with g = dy * w
    for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) {
      const float xh = (to_f(h[base + c]) - mean) * rstd;
      const float g = to_f(dy[base + c]) * (weight != nullptr ? to_f(weight[c]) : 1.f);
      s_g += g;
      s_gx += g * xh;
    }
    const float mean_g = rms ? 0.f : block_sum(s_g, red) * inv_h;
    const float mean_gx = block_sum(s_gx, red) * inv_h;
    for (int64_t c0 = threadIdx.x * 8; c0 < hidden; c0 += blockDim.x * 8) {  // the forward's mask chunks
      const uint32_t keep = drop.keep8(base + c0);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t c = c0 + i;
        if (c < hidden) {
          const float xh = (to_f(h[base + c]) - mean) * rstd;
          const float dyv = to_f(dy[base + c]);
          const float g = dyv * (weight != nullptr ? to_f(weight[c]) : 1.f);
          float dh = rstd * (g - mean_g - xh * mean_gx);
          if (dh_extra != nullptr) dh += to_f(dh_extra[base + c]);
          if (dresidual != nullptr) dresidual[base + c] = from_f<T>(dh);
          dx[base + c] = from_f<T>(drop.on ? dh * drop.factor(keep, i) : dh);
          if (dwp != nullptr) dwp[c] += dyv * xh;
          if (dbp != nullptr) dbp[c] += dyv;
        }
      }
    }
  }
}

// out[c] = sum over parts of part[p * hidden + c], cast to W.
template <typename W>
__global__ void column_sum_cuda(const float* __restrict__ part, W* __restrict__ out, int parts, int64_t hidden) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= hidden) return;
  float s = 0.f;
  for (int p = 0; p < parts; ++p) s += part[p * hidden + c];
  out[c] = from_f<W>(s);
}

template <typename T, typename W>
cudaError_t fwd(const void* x, const void* residual, const void* weight, const void* bias, void* y, void* h_out,
                float* mean, float* rstd, int64_t rows, int64_t hidden, float eps, bool rms, PtftDropout drop,
                cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
  auto kernel = layer_norm_fwd_cuda<T, W>;
  if (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(rows), kLnThreads, smem, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const W*>(weight),
      static_cast<const W*>(bias), static_cast<T*>(y), static_cast<T*>(h_out), mean, rstd, hidden, eps, rms, drop);
  return cudaGetLastError();
}

template <typename T, typename W>
cudaError_t bwd(const void* dy, const void* dh_extra, const void* h, const void* weight, const float* mean,
                const float* rstd, void* dx, void* dresidual, void* dweight, void* dbias, float* workspace,
                int parts, int64_t rows, int64_t hidden, bool rms, PtftDropout drop, cudaStream_t stream) {
  float* dw_part = dweight != nullptr ? workspace : nullptr;
  float* db_part = dbias != nullptr ? workspace + static_cast<int64_t>(parts) * hidden : nullptr;
  if (dweight != nullptr || dbias != nullptr) {
    cudaError_t err =
        cudaMemsetAsync(workspace, 0, 2 * static_cast<size_t>(parts) * hidden * sizeof(float), stream);
    if (err != cudaSuccess) return err;
  }
  layer_norm_bwd_cuda<T, W><<<parts, kLnThreads, 0, stream>>>(
      static_cast<const T*>(dy), static_cast<const T*>(dh_extra), static_cast<const T*>(h),
      static_cast<const W*>(weight), mean, rstd, static_cast<T*>(dx), static_cast<T*>(dresidual), dw_part, db_part,
      rows, hidden, rms, drop);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const unsigned grid = static_cast<unsigned>(ceil_div(hidden, 256));
  if (dweight != nullptr) {
    column_sum_cuda<W><<<grid, 256, 0, stream>>>(dw_part, static_cast<W*>(dweight), parts, hidden);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (dbias != nullptr) {
    column_sum_cuda<W><<<grid, 256, 0, stream>>>(db_part, static_cast<W*>(dbias), parts, hidden);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// (x dtype, weight dtype) → instantiation; weight is x's dtype or fp32.
#define PTFT_LN_DISPATCH(XD, WD, FN, ...)                                                           \
  do {                                                                                              \
    if (XD == PTFT_F32 && WD == PTFT_F32) return FN<float, float>(__VA_ARGS__);                     \
    if (XD == PTFT_F16 && WD == PTFT_F16) return FN<__half, __half>(__VA_ARGS__);                   \
    if (XD == PTFT_F16 && WD == PTFT_F32) return FN<__half, float>(__VA_ARGS__);                    \
    if (XD == PTFT_BF16 && WD == PTFT_BF16) return FN<__nv_bfloat16, __nv_bfloat16>(__VA_ARGS__);   \
    if (XD == PTFT_BF16 && WD == PTFT_F32) return FN<__nv_bfloat16, float>(__VA_ARGS__);            \
    return cudaErrorInvalidValue;                                                                   \
  } while (0)

}  // namespace
}  // namespace ptft

int64_t ptft_layer_norm_max_hidden() { return ptft::kLnMaxHidden; }

cudaError_t ptft_layer_norm_fwd(PtftDtype x_dtype, PtftDtype w_dtype, const void* x, const void* residual,
                                const void* weight, const void* bias, void* y, void* h_out, float* mean,
                                float* rstd, int64_t rows, int64_t hidden, float eps, bool rms,
                                PtftDropout drop, cudaStream_t stream) {
  if (hidden < 1 || hidden > ptft::kLnMaxHidden || rows < 1 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  PTFT_LN_DISPATCH(x_dtype, w_dtype, ptft::fwd, x, residual, weight, bias, y, h_out, mean, rstd, rows, hidden, eps,
                   rms, drop, stream);
}

cudaError_t ptft_layer_norm_bwd(PtftDtype x_dtype, PtftDtype w_dtype, const void* dy, const void* dh_extra,
                                const void* h, const void* weight, const float* mean, const float* rstd,
                                void* dx, void* dresidual, void* dweight, void* dbias, float* workspace,
                                int num_partials, int64_t rows, int64_t hidden, bool rms, PtftDropout drop,
                                cudaStream_t stream) {
  if (hidden < 1 || rows < 1 || num_partials < 1) return cudaErrorInvalidValue;
  PTFT_LN_DISPATCH(x_dtype, w_dtype, ptft::bwd, dy, dh_extra, h, weight, mean, rstd, dx, dresidual, dweight, dbias,
                   workspace, num_partials, rows, hidden, rms, drop, stream);
}

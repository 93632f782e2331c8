// C-style launcher API of the ptft_fast CUDA kernels.
//
// No torch headers here or in any csrc/*.cu: kernels take raw device pointers, sizes and a
// cudaStream_t and return the cudaError_t of their launches. csrc/binding.cpp is the only file
// that sees torch; it checks inputs, allocates outputs/workspaces and calls these on the current
// stream. All "rows"/"cols" are element counts; every tensor is dense row-major (contiguous)
// unless a stride argument says otherwise.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

enum PtftDtype : int { PTFT_F32 = 0, PTFT_F16 = 1, PTFT_BF16 = 2 };

// Dropout with a Philox-4x32-10 counter RNG: element `idx` of a tensor is kept iff
// uniform(seed, offset, idx) >= p and then scaled by 1/(1-p). `rng` is a device pointer to
// {seed, offset} (int64), so the state is drawn on the device (no host sync, graph-safe) and
// the backward pass regenerates the identical mask. p == 0 (or rng == nullptr) disables it.
struct PtftDropout {
  const int64_t* rng;
  float p;
};

// Compute capabilities this library was compiled for, e.g. "800,900".
const char* ptft_compiled_archs();

// ------------------------------------------------------------------------------- layer norm
// h = dropout(x) + residual (rounded to x's dtype as PyTorch does); y = norm(h) * w + b.
// x, residual, y, h_out: (rows, hidden) in x_dtype; weight, bias: (hidden,) in w_dtype
// (x_dtype or PTFT_F32), each nullable; h_out nullable; mean, rstd: (rows,) fp32.
int64_t ptft_layer_norm_max_hidden();
cudaError_t ptft_layer_norm_fwd(PtftDtype x_dtype, PtftDtype w_dtype, const void* x, const void* residual,
                                const void* weight, const void* bias, void* y, void* h_out, float* mean,
                                float* rstd, int64_t rows, int64_t hidden, float eps, bool rms,
                                PtftDropout drop, cudaStream_t stream);
// dy: (rows, hidden); dh_extra: gradient of the returned h (nullable); h: the normalized input.
// dx (and dresidual when non-null) in x_dtype; dweight/dbias (nullable) in w_dtype.
// workspace: 2 * num_partials * hidden floats (per-block partial sums of dweight and dbias).
cudaError_t ptft_layer_norm_bwd(PtftDtype x_dtype, PtftDtype w_dtype, const void* dy, const void* dh_extra,
                                const void* h, const void* weight, const float* mean, const float* rstd,
                                void* dx, void* dresidual, void* dweight, void* dbias, float* workspace,
                                int num_partials, int64_t rows, int64_t hidden, bool rms, PtftDropout drop,
                                cudaStream_t stream);

// -------------------------------------------------------------------------------- attention
// q/out/dout/dq: (rows_q, Hq, D), k/v/dk/dv: (rows_k, Hkv, D), contiguous, fp16/bf16.
// Padded form: rows = batch * T (cu_q == cu_k == nullptr). Varlen: rows = total, cu_q/cu_k
// (batch+1,) int32 prefix sums. lse, dsum: (batch, Hq, max_q) fp32. Bias (nullable): element
// (b, h, i, j) at bias + b*bias_sb + h*bias_sh + i*bias_sq + j*bias_sk (0 strides broadcast),
// in q's dtype. key_padding_mask (nullable, padded form): (batch, max_k) bytes, nonzero = attend.
// dbias_full (nullable): (batch, Hq, max_q, max_k) fp32, zero-filled by the caller.
// dq_acc: fp32 like q, zero-filled by the caller; the binding casts it to q's dtype.
// T5 relative position bias (nullable, instead of or besides bias): rel_lut (max_q + max_k - 1,)
// int32 bucket of each key - query distance d at index d + max_q - 1, rel_table (num_buckets,
// Hq) fp32, num_buckets <= ptft_attention_max_buckets(); drel_table (nullable, backward): its
// gradient, (num_buckets, Hq) fp32, zero-filled by the caller. prefix_len (nullable, causal only):
// (batch,) int32, prefix LM: query i of sequence b also sees keys j < prefix_len[b].
struct PtftAttnArgs {
  PtftDtype dtype;
  int batch, hq, hkv, head_dim, max_q, max_k;
  const void *q, *k, *v;
  void* out;
  float* lse;
  const int32_t *cu_q, *cu_k;
  const uint8_t* key_padding_mask;
  const void* bias;
  int64_t bias_sb, bias_sh, bias_sq, bias_sk;
  const int32_t* rel_lut;
  const float* rel_table;
  int num_buckets;
  const int32_t* prefix_len;
  bool causal;
  float softmax_scale;
  PtftDropout drop;
  // backward only
  const void* dout;
  float* dsum;
  float* dq_acc;
  void *dk, *dv;
  float* dbias_full;
  float* drel_table;
};
bool ptft_attention_supports_head_dim(int head_dim);
int ptft_attention_max_buckets();
cudaError_t ptft_attention_fwd(const PtftAttnArgs& args, cudaStream_t stream);
cudaError_t ptft_attention_bwd(const PtftAttnArgs& args, cudaStream_t stream);

// ---------------------------------------------------------------------- linear cross-entropy
// Labeled rows are compacted on the device: rows[0:count) are the indices (ascending) of the
// rows whose label != ignore_index, count (1,) int32 lives on the device. Every later kernel
// reads count from device memory, so nothing syncs with the host; blocks past count exit.
// reduction: 0 = none, 1 = sum, 2 = mean.
cudaError_t ptft_linear_cross_entropy_compact(const int64_t* labels, int64_t n, int64_t ignore_index, int32_t* rows,
                                              int32_t* count, cudaStream_t stream);
// Workspace floats needed by ptft_linear_cross_entropy_fwd for n rows and a vocab of size vocab.
int64_t ptft_linear_cross_entropy_fwd_workspace(int64_t n, int64_t vocab);
// hidden: (n, H), weight: (vocab, H), bias: (vocab,) nullable, all dtype (fp16/bf16).
// lse: (n,) fp32 per compacted row; row_loss: (n,) fp32 — for reduction none indexed by the
// original row (caller zero-fills it), else per compacted row; loss: scalar fp32 (sum/mean).
cudaError_t ptft_linear_cross_entropy_fwd(PtftDtype dtype, const void* hidden, const void* weight, const void* bias,
                                          const int64_t* labels, const int32_t* rows, const int32_t* count, int64_t n,
                                          int64_t vocab, int64_t hidden_dim, float label_smoothing, float z_loss,
                                          int reduction, float* workspace, float* lse, float* row_loss, float* loss,
                                          cudaStream_t stream);
// dlogits block for compacted rows [r0, r0+nr) and vocab [v0, v0+nv): (nr, nv) in dtype, rounded
// once from the fp32 value; rows past count get zeros. dlogits_lo: nullable, the residual
// (fp32 value - dlogits) in dtype, for products at ~2x the 16-bit precision (reduction none,
// whose gradients PyTorch rounds once: see cross_entropy.cu). db_part: nullable, (ceil(nr / 64), nv) fp32
// column sums of the fp32 block per 64-row block. grad: (n,) loss gradient for reduction none
// (applied per row); for sum/mean the block is left unscaled and the caller multiplies the
// products by the scalar gradient (/ count for mean), keeping the 16-bit values clear of underflow.
cudaError_t ptft_linear_cross_entropy_dlogits(PtftDtype dtype, const void* hidden, const void* weight, const void* bias,
                                              const int64_t* labels, const int32_t* rows, const int32_t* count,
                                              const float* lse, const float* grad, int reduction, int64_t n,
                                              int64_t vocab, int64_t hidden_dim, float label_smoothing, float z_loss,
                                              int64_t r0, int64_t nr, int64_t v0, int64_t nv, void* dlogits,
                                              void* dlogits_lo, float* db_part, cudaStream_t stream);
// out[rc] = hidden[rows[rc]] for rc < count, zeros after: (n, H) in dtype.
cudaError_t ptft_linear_cross_entropy_gather_rows(PtftDtype dtype, const void* hidden, const int32_t* rows,
                                                  const int32_t* count, int64_t n, int64_t hidden_dim, void* out,
                                                  cudaStream_t stream);
// dst[rows[rc]] = src[rc] (fp32 → dtype) for rc < count; other rows of dst left as they are.
cudaError_t ptft_linear_cross_entropy_scatter_rows(PtftDtype dtype, const float* src, const int32_t* rows,
                                                   const int32_t* count, int64_t n, int64_t hidden_dim, void* dst,
                                                   cudaStream_t stream);

// ------------------------------------------------------------------------------------- LoRA
// u = dropout(x) Aᵀ: x (m, in), A (r, in) → u (m, r) as a 16-bit pair u_hi + u_lo (each (m, r),
// together ~2x dtype's precision); tensor cores, dropout fused in the load.
cudaError_t ptft_lora_linear_down(PtftDtype dtype, const void* x, const void* lora_a, void* u_hi, void* u_lo, int64_t m,
                                  int64_t in, int64_t r, PtftDropout drop, cudaStream_t stream);
// y = base + bias + scaling · (u_hi + u_lo) Bᵀ, rounded once: u_hi/u_lo (m, r), B (out, r),
// base (m, out) fp32, y (m, out), bias (out,) nullable.
cudaError_t ptft_lora_linear_up_add(PtftDtype dtype, const void* u_hi, const void* u_lo, const void* lora_b,
                                    const float* base, const void* bias, void* y, int64_t m, int64_t out, int64_t r,
                                    float scaling, cudaStream_t stream);
// y = dropout(x), element index = flat index (matches ptft_lora_linear_down's mask).
cudaError_t ptft_dropout_apply(PtftDtype dtype, const void* x, void* y, int64_t n, PtftDropout drop,
                               cudaStream_t stream);
// dx = dx_base + dropout(t) (same mask as ptft_lora_linear_down): dx_base, t (n,) fp32, dx (n,) in dtype.
cudaError_t ptft_lora_linear_dx_combine(PtftDtype dtype, const float* dx_base, const float* t, void* dx, int64_t n,
                                        PtftDropout drop, cudaStream_t stream);

// The one csrc file that sees torch: op schemas (declared once), their CUDA implementations,
// input checks, and a small pybind11 module with build information.
//
// Each implementation checks its inputs (the Python layer in ptft_fast/ops/cuda_backend.py has
// already adapted them: 2-D views, contiguity, dtype casts), allocates outputs and workspaces,
// and launches the kernels of csrc/*.cu on the current stream under a device guard; every
// launch's cudaError_t is checked. Autograd and fake (meta) implementations are registered from
// Python with torch.library.register_autograd / register_fake.
//
// Plain GEMMs run on cuBLAS through at::mm: the LoRA base projection and the LoRA backward
// products, and the cross-entropy backward products of the dlogits blocks with weight/hidden.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cross_entropy_plan.h"
#include "ptft_kernels.h"

#ifndef PTFT_VERSION
#define PTFT_VERSION "0.1.0"
#endif

// ------------------------------------------------------------------------------ checks
// Every message names the op, the argument, the rule and the actual value. The _N forms take
// the argument's name explicitly (for optionals and loops); the short forms use the expression.
#define PTFT_CHECK_CUDA_N(OP, x, NAME) \
  TORCH_CHECK_VALUE((x).is_cuda(), OP, ": ", NAME, " must be a CUDA tensor, got device ", (x).device())
#define PTFT_CHECK_CONTIGUOUS_N(OP, x, NAME) \
  TORCH_CHECK_VALUE((x).is_contiguous(), OP, ": ", NAME, " must be contiguous, got strides ", (x).strides())
#define PTFT_CHECK_DTYPE_N(OP, x, NAME, DT)                                                                  \
  TORCH_CHECK_TYPE((x).scalar_type() == (DT), OP, ": ", NAME, " must have dtype ", (DT), ", got ", \
                   (x).scalar_type())
#define PTFT_CHECK_HALF_N(OP, x, NAME)                                                                        \
  TORCH_CHECK_TYPE((x).scalar_type() == at::kHalf || (x).scalar_type() == at::kBFloat16, OP, ": ", NAME,     \
                   " must be float16 or bfloat16 (tensor-core kernels), got ", (x).scalar_type())
#define PTFT_CHECK_DIM_N(OP, x, NAME, N) \
  TORCH_CHECK_VALUE((x).dim() == (N), OP, ": ", NAME, " must have " #N " dims, got shape ", (x).sizes())
#define PTFT_CHECK_SHAPE_N(OP, x, NAME, ...)                                                              \
  TORCH_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), OP, ": ", NAME, " must have shape (" \
                    #__VA_ARGS__ ") = ", at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())
#define PTFT_CHECK_SAME_DEVICE_N(OP, x, NAME, ref)                                                          \
  TORCH_CHECK_VALUE((x).device() == (ref).device(), OP, ": ", NAME, " must be on " #ref "'s device ", \
                    (ref).device(), ", got ", (x).device())
// A CUDA, contiguous tensor on ref's device.
#define PTFT_CHECK_INPUT_N(OP, x, NAME, ref)  \
  do {                                        \
    PTFT_CHECK_CUDA_N(OP, x, NAME);           \
    PTFT_CHECK_SAME_DEVICE_N(OP, x, NAME, ref); \
    PTFT_CHECK_CONTIGUOUS_N(OP, x, NAME);     \
  } while (0)
#define PTFT_CHECK_CUDA(OP, x) PTFT_CHECK_CUDA_N(OP, x, #x)
#define PTFT_CHECK_CONTIGUOUS(OP, x) PTFT_CHECK_CONTIGUOUS_N(OP, x, #x)
#define PTFT_CHECK_DTYPE(OP, x, DT) PTFT_CHECK_DTYPE_N(OP, x, #x, DT)
#define PTFT_CHECK_HALF(OP, x) PTFT_CHECK_HALF_N(OP, x, #x)
#define PTFT_CHECK_DIM(OP, x, N) PTFT_CHECK_DIM_N(OP, x, #x, N)
#define PTFT_CHECK_SHAPE(OP, x, ...) PTFT_CHECK_SHAPE_N(OP, x, #x, __VA_ARGS__)
#define PTFT_CHECK_SAME_DEVICE(OP, x, ref) PTFT_CHECK_SAME_DEVICE_N(OP, x, #x, ref)
#define PTFT_CHECK_INPUT(OP, x, ref) PTFT_CHECK_INPUT_N(OP, x, #x, ref)
#define PTFT_CHECK_LAUNCH(OP, expr)                                                                       \
  do {                                                                                                    \
    const cudaError_t ptft_err_ = (expr);                                                                 \
    TORCH_CHECK(ptft_err_ == cudaSuccess, OP, ": CUDA launch failed (", #expr, "): ",                     \
                cudaGetErrorString(ptft_err_));                                                           \
  } while (0)

namespace {

using OptTensor = std::optional<at::Tensor>;
// (name, tensor) pairs for checks in loops
struct Named {
  const char* name;
  const at::Tensor* t;
};
struct NamedOpt {
  const char* name;
  const OptTensor* t;
};

PtftDtype to_ptft(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return PTFT_F32;
    case at::kHalf:
      return PTFT_F16;
    case at::kBFloat16:
      return PTFT_BF16;
    default:
      TORCH_CHECK_TYPE(false, "ptft_fast: unsupported dtype ", t, " (expected float32, float16 or bfloat16)");
  }
}

const void* ptr_or_null(const OptTensor& t) { return t.has_value() ? t->data_ptr() : nullptr; }

// c10's stream/guard headers only: ATen/cuda/CUDAContext.h would drag in cuBLAS/cuSPARSE headers.
cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Dropout state: rng is a (2,) int64 CUDA tensor {seed, offset} drawn by the caller.
PtftDropout dropout_arg(const char* op, const OptTensor& rng, double p, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, op, ": dropout_p must be in [0, 1), got ", p);
  if (p == 0.0) return PtftDropout{nullptr, 0.f};
  TORCH_CHECK_VALUE(rng.has_value(), op, ": dropout_p=", p, " > 0 needs the rng tensor {seed, offset}");
  const at::Tensor& r = *rng;
  PTFT_CHECK_INPUT(op, r, ref);
  PTFT_CHECK_DTYPE(op, r, at::kLong);
  PTFT_CHECK_SHAPE(op, r, 2);
  return PtftDropout{r.data_ptr<int64_t>(), static_cast<float>(p)};
}

int reduction_code(const char* op, c10::string_view reduction) {
  if (reduction == "none") return ptft::kReductionNone;
  if (reduction == "sum") return 1;
  if (reduction == "mean") return 2;
  TORCH_CHECK_VALUE(false, op, ": reduction must be 'none', 'sum' or 'mean', got '", std::string(reduction), "'");
}

int num_sms() {
  int device = 0, sms = 0;
  PTFT_CHECK_LAUNCH("ptft_fast", cudaGetDevice(&device));
  PTFT_CHECK_LAUNCH("ptft_fast", cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

// ---------------------------------------------------------------------------- layer norm
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(const at::Tensor& x, const OptTensor& weight,
                                                                          const OptTensor& bias,
                                                                          const OptTensor& residual,
                                                                          const OptTensor& rng, double eps, bool rms,
                                                                          double dropout_p, bool store_h) {
  constexpr const char* OP = "ptft_fast::layer_norm_fwd";
  PTFT_CHECK_CUDA(OP, x);
  PTFT_CHECK_CONTIGUOUS(OP, x);
  PTFT_CHECK_DIM(OP, x, 2);
  const int64_t rows = x.size(0), hidden = x.size(1);
  TORCH_CHECK_VALUE(rows >= 1 && hidden >= 1, OP, ": x must be non-empty, got shape ", x.sizes());
  TORCH_CHECK_VALUE(hidden <= ptft_layer_norm_max_hidden(), OP, ": hidden size x.shape[-1] must be <= ",
                    ptft_layer_norm_max_hidden(), ", got ", hidden);
  TORCH_CHECK_VALUE(eps > 0.0, OP, ": eps must be > 0, got ", eps);
  const PtftDtype xd = to_ptft(x.scalar_type());
  PtftDtype wd = xd;
  for (const auto& [name, t] : {NamedOpt{"weight", &weight}, NamedOpt{"bias", &bias}}) {
    if (!t->has_value()) continue;
    const at::Tensor& w = **t;
    PTFT_CHECK_INPUT_N(OP, w, name, x);
    PTFT_CHECK_SHAPE_N(OP, w, name, hidden);
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type() || w.scalar_type() == at::kFloat, OP, ": ", name,
                     " must have x's dtype (", x.scalar_type(), ") or float32, got ", w.scalar_type());
    wd = to_ptft(w.scalar_type());
  }
  if (weight.has_value() && bias.has_value()) PTFT_CHECK_DTYPE_N(OP, (*bias), "bias", weight->scalar_type());
  if (residual.has_value()) {
    PTFT_CHECK_INPUT_N(OP, (*residual), "residual", x);
    PTFT_CHECK_DTYPE_N(OP, (*residual), "residual", x.scalar_type());
    PTFT_CHECK_SHAPE_N(OP, (*residual), "residual", rows, hidden);
  }
  const PtftDropout drop = dropout_arg(OP, rng, dropout_p, x);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  at::Tensor h = store_h ? at::empty_like(x) : x.new_empty({0});
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  PTFT_CHECK_LAUNCH(OP, ptft_layer_norm_fwd(xd, wd, x.data_ptr(), ptr_or_null(residual), ptr_or_null(weight),
                                            ptr_or_null(bias), y.data_ptr(), store_h ? h.data_ptr() : nullptr,
                                            mean.data_ptr<float>(), rstd.data_ptr<float>(), rows, hidden,
                                            static_cast<float>(eps), rms, drop, stream()));
  return {y, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(
    const at::Tensor& dy, const OptTensor& dh, const at::Tensor& h, const OptTensor& weight, const OptTensor& bias,
    const at::Tensor& mean, const at::Tensor& rstd, const OptTensor& rng, bool rms, double dropout_p,
    bool has_residual) {
  constexpr const char* OP = "ptft_fast::layer_norm_bwd";
  PTFT_CHECK_CUDA(OP, h);
  PTFT_CHECK_CONTIGUOUS(OP, h);
  PTFT_CHECK_DIM(OP, h, 2);
  const int64_t rows = h.size(0), hidden = h.size(1);
  PTFT_CHECK_INPUT(OP, dy, h);
  PTFT_CHECK_DTYPE(OP, dy, h.scalar_type());
  PTFT_CHECK_SHAPE(OP, dy, rows, hidden);
  if (dh.has_value()) {
    PTFT_CHECK_INPUT_N(OP, (*dh), "dh", h);
    PTFT_CHECK_DTYPE_N(OP, (*dh), "dh", h.scalar_type());
    PTFT_CHECK_SHAPE_N(OP, (*dh), "dh", rows, hidden);
  }
  for (const auto& [name, t] : {Named{"mean", &mean}, Named{"rstd", &rstd}}) {
    PTFT_CHECK_INPUT_N(OP, *t, name, h);
    PTFT_CHECK_DTYPE_N(OP, *t, name, at::kFloat);
    PTFT_CHECK_SHAPE_N(OP, *t, name, rows);
  }
  const PtftDtype xd = to_ptft(h.scalar_type());
  PtftDtype wd = xd;
  for (const auto& [name, t] : {NamedOpt{"weight", &weight}, NamedOpt{"bias", &bias}}) {
    if (!t->has_value()) continue;
    PTFT_CHECK_INPUT_N(OP, **t, name, h);
    PTFT_CHECK_SHAPE_N(OP, **t, name, hidden);
    wd = to_ptft((*t)->scalar_type());
  }
  const PtftDropout drop = dropout_arg(OP, rng, dropout_p, h);
  const c10::cuda::OptionalCUDAGuard guard(h.device());
  at::Tensor dx = at::empty_like(h);
  at::Tensor dres = has_residual ? at::empty_like(h) : h.new_empty({0});
  at::Tensor dw = weight.has_value() ? at::empty_like(*weight) : h.new_empty({0});
  at::Tensor db = bias.has_value() ? at::empty_like(*bias) : h.new_empty({0});
  const int parts = static_cast<int>(std::min<int64_t>(rows, 2 * num_sms()));
  at::Tensor ws = (weight.has_value() || bias.has_value())
                      ? at::empty({2 * parts * hidden}, h.options().dtype(at::kFloat))
                      : h.new_empty({0}, h.options().dtype(at::kFloat));
  PTFT_CHECK_LAUNCH(OP, ptft_layer_norm_bwd(xd, wd, dy.data_ptr(), ptr_or_null(dh), h.data_ptr(), ptr_or_null(weight),
                                            mean.data_ptr<float>(), rstd.data_ptr<float>(), dx.data_ptr(),
                                            has_residual ? dres.data_ptr() : nullptr,
                                            weight.has_value() ? dw.data_ptr() : nullptr,
                                            bias.has_value() ? db.data_ptr() : nullptr,
                                            ws.numel() > 0 ? ws.data_ptr<float>() : nullptr, parts, rows, hidden, rms,
                                            drop, stream()));
  return {dx, dres, dw, db};
}

// ----------------------------------------------------------------------------- attention
struct AttnShapes {
  int64_t batch, hq, hkv, d, max_q, max_k;
  bool varlen;
};

// Checks q/k/v/cu_seqlens/mask/bias and fills the launcher arguments shared by fwd and bwd.
AttnShapes attention_args(const char* OP, PtftAttnArgs& a, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const OptTensor& cu_q, const OptTensor& cu_k, const OptTensor& kpm,
                          const OptTensor& bias, const OptTensor& rel_lut, const OptTensor& rel_table,
                          const OptTensor& prefix, const OptTensor& rng, int64_t max_q, int64_t max_k, bool causal,
                          double dropout_p, double scale) {
  PTFT_CHECK_CUDA(OP, q);
  PTFT_CHECK_HALF(OP, q);
  for (const auto& [name, t] : {Named{"q", &q}, Named{"k", &k}, Named{"v", &v}}) PTFT_CHECK_INPUT_N(OP, *t, name, q);
  PTFT_CHECK_DTYPE(OP, k, q.scalar_type());
  PTFT_CHECK_DTYPE(OP, v, q.scalar_type());
  TORCH_CHECK_VALUE(cu_q.has_value() == cu_k.has_value(), OP, ": give both cu_seqlens_q and cu_seqlens_k or neither");
  AttnShapes s{};
  s.varlen = cu_q.has_value();
  const int64_t nd = s.varlen ? 3 : 4;
  TORCH_CHECK_VALUE(q.dim() == nd && k.dim() == nd && v.dim() == nd, OP, ": q, k, v must be ",
                    s.varlen ? "(total, H, D) in varlen form" : "(B, T, H, D)", ", got ", q.sizes(), ", ", k.sizes(),
                    ", ", v.sizes());
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), OP, ": k and v must have one shape, got ", k.sizes(), " and ", v.sizes());
  s.hq = q.size(-2);
  s.hkv = k.size(-2);
  s.d = q.size(-1);
  TORCH_CHECK_VALUE(k.size(-1) == s.d, OP, ": head dim of k (", k.size(-1), ") must equal q's (", s.d, ")");
  TORCH_CHECK_VALUE(s.hkv >= 1 && s.hq % s.hkv == 0, OP, ": Hq must be divisible by Hkv, got Hq=", s.hq, ", Hkv=", s.hkv);
  TORCH_CHECK_VALUE(ptft_attention_supports_head_dim(static_cast<int>(s.d)), OP,
                    ": head dim D must be 32, 64 or 128 for the CUDA kernels, got ", s.d);
  for (const auto& [name, t] : {Named{"q", &q}, Named{"k", &k}, Named{"v", &v}}) {
    TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, OP, ": ", name,
                      " must be 16-byte aligned (the kernels copy 16-byte chunks), got address ", t->data_ptr());
  }
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, OP, ": dropout_p must be in [0, 1), got ", dropout_p);
  TORCH_CHECK_VALUE(scale > 0.0, OP, ": softmax_scale must be > 0, got ", scale);
  if (s.varlen) {
    for (const auto& [name, c] : {NamedOpt{"cu_seqlens_q", &cu_q}, NamedOpt{"cu_seqlens_k", &cu_k}}) {
      PTFT_CHECK_INPUT_N(OP, **c, name, q);
      PTFT_CHECK_DTYPE_N(OP, **c, name, at::kInt);
      PTFT_CHECK_DIM_N(OP, **c, name, 1);
    }
    TORCH_CHECK_VALUE(cu_q->numel() == cu_k->numel() && cu_q->numel() >= 2, OP,
                      ": cu_seqlens_q and cu_seqlens_k must both be (B + 1,), got ", cu_q->sizes(), " and ",
                      cu_k->sizes());
    TORCH_CHECK_VALUE(!kpm.has_value(), OP, ": key_padding_mask is for the padded form, not varlen");
    TORCH_CHECK_VALUE(max_q >= 1 && max_k >= 1, OP, ": max_seqlen_q/max_seqlen_k must be >= 1, got ", max_q, ", ", max_k);
    s.batch = cu_q->numel() - 1;
  } else {
    s.batch = q.size(0);
    TORCH_CHECK_VALUE(k.size(0) == s.batch, OP, ": batch of k (", k.size(0), ") must equal q's (", s.batch, ")");
    TORCH_CHECK_VALUE(max_q == q.size(1) && max_k == k.size(1), OP, ": max_seqlen_q/k must equal Tq/Tk (", q.size(1),
                      ", ", k.size(1), ") in the padded form, got ", max_q, ", ", max_k);
  }
  s.max_q = max_q;
  s.max_k = max_k;
  TORCH_CHECK_VALUE(s.batch <= 65535 && s.hq <= 65535, OP, ": batch and Hq must be <= 65535, got ", s.batch, ", ", s.hq);
  a.dtype = to_ptft(q.scalar_type());
  a.batch = static_cast<int>(s.batch);
  a.hq = static_cast<int>(s.hq);
  a.hkv = static_cast<int>(s.hkv);
  a.head_dim = static_cast<int>(s.d);
  a.max_q = static_cast<int>(max_q);
  a.max_k = static_cast<int>(max_k);
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.cu_q = s.varlen ? cu_q->data_ptr<int32_t>() : nullptr;
  a.cu_k = s.varlen ? cu_k->data_ptr<int32_t>() : nullptr;
  a.key_padding_mask = nullptr;
  if (kpm.has_value()) {
    PTFT_CHECK_INPUT_N(OP, (*kpm), "key_padding_mask", q);
    PTFT_CHECK_DTYPE_N(OP, (*kpm), "key_padding_mask", at::kBool);
    PTFT_CHECK_SHAPE_N(OP, (*kpm), "key_padding_mask", s.batch, max_k);
    a.key_padding_mask = static_cast<const uint8_t*>(kpm->data_ptr());
  }
  a.bias = nullptr;
  a.bias_sb = a.bias_sh = a.bias_sq = a.bias_sk = 0;
  if (bias.has_value()) {
    const at::Tensor& bt = *bias;
    PTFT_CHECK_INPUT_N(OP, bt, "attn_bias", q);  // contiguous, so the broadcast below is a view
    PTFT_CHECK_DTYPE_N(OP, bt, "attn_bias", q.scalar_type());
    TORCH_CHECK_VALUE(bt.dim() <= 4, OP, ": attn_bias must have <= 4 dims, got shape ", bt.sizes());
    std::vector<int64_t> shape4(4 - bt.dim(), 1);
    shape4.insert(shape4.end(), bt.sizes().begin(), bt.sizes().end());
    const std::vector<int64_t> full{s.batch, s.hq, max_q, max_k};
    for (int i = 0; i < 4; ++i) {
      TORCH_CHECK_VALUE(shape4[i] == 1 || shape4[i] == full[i], OP, ": attn_bias must broadcast to (B, Hq, Tq, Tk) = ",
                        at::IntArrayRef(full), ", got ", bt.sizes());
    }
    const at::Tensor e = bt.reshape(shape4).expand(full);  // a view: broadcast dims get stride 0
    a.bias = e.data_ptr();
    a.bias_sb = e.stride(0);
    a.bias_sh = e.stride(1);
    a.bias_sq = e.stride(2);
    a.bias_sk = e.stride(3);
  }
  a.rel_lut = nullptr;
  a.rel_table = nullptr;
  a.num_buckets = 0;
  a.drel_table = nullptr;
  TORCH_CHECK_VALUE(rel_lut.has_value() == rel_table.has_value(), OP, ": give both rel_lut and rel_table or neither");
  if (rel_lut.has_value()) {  // T5 relative position bias, looked up in the kernels
    PTFT_CHECK_INPUT_N(OP, (*rel_lut), "rel_lut", q);
    PTFT_CHECK_DTYPE_N(OP, (*rel_lut), "rel_lut", at::kInt);
    PTFT_CHECK_SHAPE_N(OP, (*rel_lut), "rel_lut", max_q + max_k - 1);
    PTFT_CHECK_INPUT_N(OP, (*rel_table), "rel_table", q);
    PTFT_CHECK_DTYPE_N(OP, (*rel_table), "rel_table", at::kFloat);
    PTFT_CHECK_DIM_N(OP, (*rel_table), "rel_table", 2);
    const int64_t nb = rel_table->size(0);
    TORCH_CHECK_VALUE(nb >= 1 && nb <= ptft_attention_max_buckets() && rel_table->size(1) == s.hq, OP,
                      ": rel_table must be (num_buckets, Hq) with 1 <= num_buckets <= ", ptft_attention_max_buckets(),
                      " and Hq = ", s.hq, ", got ", rel_table->sizes());
    a.rel_lut = rel_lut->data_ptr<int32_t>();
    a.rel_table = rel_table->data_ptr<float>();
    a.num_buckets = static_cast<int>(nb);
  }
  a.prefix_len = nullptr;
  if (prefix.has_value()) {  // prefix LM: per-sequence prefix lengths (key positions)
    TORCH_CHECK_VALUE(causal, OP, ": prefix_lengths needs causal=True");
    PTFT_CHECK_INPUT_N(OP, (*prefix), "prefix_lengths", q);
    PTFT_CHECK_DTYPE_N(OP, (*prefix), "prefix_lengths", at::kInt);
    PTFT_CHECK_SHAPE_N(OP, (*prefix), "prefix_lengths", s.batch);
    a.prefix_len = prefix->data_ptr<int32_t>();
  }
  a.causal = causal;
  a.softmax_scale = static_cast<float>(scale);
  a.drop = dropout_arg(OP, rng, dropout_p, q);
  a.out = nullptr;
  a.lse = nullptr;
  a.dout = nullptr;
  a.dsum = nullptr;
  a.dq_acc = nullptr;
  a.dk = a.dv = nullptr;
  a.dbias_full = nullptr;
  return s;
}

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const OptTensor& cu_q, const OptTensor& cu_k, const OptTensor& kpm,
                                                 const OptTensor& bias, const OptTensor& rel_lut,
                                                 const OptTensor& rel_table, const OptTensor& prefix,
                                                 const OptTensor& rng, int64_t max_q, int64_t max_k, bool causal,
                                                 double dropout_p, double scale) {
  constexpr const char* OP = "ptft_fast::attention_fwd";
  PtftAttnArgs a;
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  const AttnShapes s = attention_args(OP, a, q, k, v, cu_q, cu_k, kpm, bias, rel_lut, rel_table, prefix, rng, max_q,
                                      max_k, causal, dropout_p, scale);
  at::Tensor out = at::empty_like(q);
  // zero-filled: varlen leaves rows past a sequence's length unwritten
  at::Tensor lse = at::zeros({s.batch, s.hq, s.max_q}, q.options().dtype(at::kFloat));
  a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  PTFT_CHECK_LAUNCH(OP, ptft_attention_fwd(a, stream()));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const OptTensor& cu_q, const OptTensor& cu_k, const OptTensor& kpm, const OptTensor& bias,
    const OptTensor& rel_lut, const OptTensor& rel_table, const OptTensor& prefix,
    const OptTensor& rng, int64_t max_q, int64_t max_k, bool causal, double dropout_p, double scale, bool bias_grad,
    bool rel_grad) {
  constexpr const char* OP = "ptft_fast::attention_bwd";
  PtftAttnArgs a;
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  const AttnShapes s = attention_args(OP, a, q, k, v, cu_q, cu_k, kpm, bias, rel_lut, rel_table, prefix, rng, max_q,
                                      max_k, causal, dropout_p, scale);
  for (const auto& [name, t] : {Named{"dout", &dout}, Named{"out", &out}}) {
    PTFT_CHECK_INPUT_N(OP, *t, name, q);
    PTFT_CHECK_DTYPE_N(OP, *t, name, q.scalar_type());
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), OP, ": dout and out must have q's shape ", q.sizes(), ", got ",
                      t->sizes());
  }
  PTFT_CHECK_INPUT(OP, lse, q);
  PTFT_CHECK_DTYPE(OP, lse, at::kFloat);
  PTFT_CHECK_SHAPE(OP, lse, s.batch, s.hq, s.max_q);
  TORCH_CHECK_VALUE(!bias_grad || bias.has_value(), OP, ": bias_grad=True needs attn_bias");
  TORCH_CHECK_VALUE(!rel_grad || rel_table.has_value(), OP, ": rel_grad=True needs rel_table");
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor dsum = at::zeros({s.batch, s.hq, s.max_q}, f32);
  at::Tensor dq_acc = at::zeros(q.sizes(), f32);
  at::Tensor dk = at::empty_like(k);
  at::Tensor dv = at::empty_like(v);
  at::Tensor dbias_full = bias_grad ? at::zeros({s.batch, s.hq, s.max_q, s.max_k}, f32) : at::Tensor();
  a.out = const_cast<void*>(out.data_ptr());
  a.lse = const_cast<float*>(lse.data_ptr<float>());
  a.dout = dout.data_ptr();
  a.dsum = dsum.data_ptr<float>();
  a.dq_acc = dq_acc.data_ptr<float>();
  a.dk = dk.data_ptr();
  a.dv = dv.data_ptr();
  a.dbias_full = bias_grad ? dbias_full.data_ptr<float>() : nullptr;
  at::Tensor drel = rel_grad ? at::zeros_like(*rel_table) : q.new_empty({0}, f32);
  a.drel_table = rel_grad ? drel.data_ptr<float>() : nullptr;
  PTFT_CHECK_LAUNCH(OP, ptft_attention_bwd(a, stream()));
  at::Tensor dbias = q.new_empty({0});
  if (bias_grad) {  // sum the full gradient over the dims attn_bias broadcasts along
    const at::Tensor& bt = *bias;
    const int64_t lead = 4 - bt.dim();
    std::vector<int64_t> dims;
    for (int64_t i = 0; i < 4; ++i) {
      const int64_t size = i < lead ? 1 : bt.size(i - lead);
      if (size == 1 && dbias_full.size(i) != 1) dims.push_back(i);
    }
    at::Tensor red = dims.empty() ? dbias_full : dbias_full.sum(dims, /*keepdim=*/true);
    dbias = red.reshape(bt.sizes()).to(bt.scalar_type());
  }
  return {dq_acc.to(q.scalar_type()), dk, dv, dbias, drel};
}

// ------------------------------------------------------------------ linear cross-entropy
void linear_cross_entropy_check(const char* OP, const at::Tensor& hidden, const at::Tensor& weight,
                                const at::Tensor& labels, const OptTensor& bias) {
  PTFT_CHECK_CUDA(OP, hidden);
  PTFT_CHECK_CONTIGUOUS(OP, hidden);
  PTFT_CHECK_HALF(OP, hidden);
  PTFT_CHECK_DIM(OP, hidden, 2);
  const int64_t n = hidden.size(0), h = hidden.size(1);
  TORCH_CHECK_VALUE(n >= 1 && n <= INT32_MAX && h >= 1, OP, ": hidden must be (N, H) with 1 <= N < 2^31, got ",
                    hidden.sizes());
  PTFT_CHECK_INPUT(OP, weight, hidden);
  PTFT_CHECK_DTYPE(OP, weight, hidden.scalar_type());
  PTFT_CHECK_DIM(OP, weight, 2);
  TORCH_CHECK_VALUE(weight.size(1) == h && weight.size(0) >= 1, OP, ": weight must be (V, H) with H = ", h, ", got ",
                    weight.sizes());
  PTFT_CHECK_INPUT(OP, labels, hidden);
  PTFT_CHECK_DTYPE(OP, labels, at::kLong);
  PTFT_CHECK_SHAPE(OP, labels, n);
  if (bias.has_value()) {
    PTFT_CHECK_INPUT_N(OP, (*bias), "bias", hidden);
    PTFT_CHECK_DTYPE_N(OP, (*bias), "bias", hidden.scalar_type());
    PTFT_CHECK_SHAPE_N(OP, (*bias), "bias", weight.size(0));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_fwd(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels, const OptTensor& bias,
    int64_t ignore_index, double label_smoothing, double z_loss, c10::string_view reduction) {
  constexpr const char* OP = "ptft_fast::linear_cross_entropy_fwd";
  linear_cross_entropy_check(OP, hidden, weight, labels, bias);
  const int red = reduction_code(OP, reduction);
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing < 1.0, OP, ": label_smoothing must be in [0, 1), got ",
                    label_smoothing);
  TORCH_CHECK_VALUE(z_loss >= 0.0, OP, ": z_loss must be >= 0, got ", z_loss);
  const c10::cuda::OptionalCUDAGuard guard(hidden.device());
  const int64_t n = hidden.size(0), h = hidden.size(1), vocab = weight.size(0);
  const auto f32 = hidden.options().dtype(at::kFloat);
  // zero-filled so that entries past the labeled count are defined
  at::Tensor rows = at::zeros({n}, hidden.options().dtype(at::kInt));
  at::Tensor count = at::zeros({1}, hidden.options().dtype(at::kInt));
  at::Tensor lse = at::zeros({n}, f32);
  at::Tensor row_loss = at::zeros({n}, f32);
  at::Tensor loss = red == 0 ? row_loss : at::zeros({}, f32);
  at::Tensor ws = at::empty({ptft_linear_cross_entropy_fwd_workspace(n, vocab)}, f32);
  PTFT_CHECK_LAUNCH(
      OP, ptft_linear_cross_entropy_compact(labels.data_ptr<int64_t>(), n, ignore_index, rows.data_ptr<int32_t>(),
                                            count.data_ptr<int32_t>(), stream()));
  PTFT_CHECK_LAUNCH(OP, ptft_linear_cross_entropy_fwd(
                            to_ptft(hidden.scalar_type()), hidden.data_ptr(), weight.data_ptr(), ptr_or_null(bias),
                            labels.data_ptr<int64_t>(), rows.data_ptr<int32_t>(), count.data_ptr<int32_t>(), n, vocab,
                            h, static_cast<float>(label_smoothing), static_cast<float>(z_loss), red,
                            ws.data_ptr<float>(), lse.data_ptr<float>(), row_loss.data_ptr<float>(),
                            red == 0 ? nullptr : loss.data_ptr<float>(), stream()));
  return {loss, lse, rows, count};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_bwd(
    const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
    const OptTensor& bias, const at::Tensor& lse, const at::Tensor& rows, const at::Tensor& count,
    double label_smoothing, double z_loss, c10::string_view reduction) {
  constexpr const char* OP = "ptft_fast::linear_cross_entropy_bwd";
  linear_cross_entropy_check(OP, hidden, weight, labels, bias);
  const int red = reduction_code(OP, reduction);
  const int64_t n = hidden.size(0), h = hidden.size(1), vocab = weight.size(0);
  PTFT_CHECK_INPUT(OP, grad, hidden);
  PTFT_CHECK_DTYPE(OP, grad, at::kFloat);
  TORCH_CHECK_VALUE(red == 0 ? grad.sizes() == at::IntArrayRef({n}) : grad.numel() == 1, OP,
                    ": grad must be (N,) for reduction='none' and a scalar otherwise, got ", grad.sizes());
  PTFT_CHECK_INPUT(OP, lse, hidden);
  PTFT_CHECK_DTYPE(OP, lse, at::kFloat);
  PTFT_CHECK_SHAPE(OP, lse, n);
  PTFT_CHECK_INPUT(OP, rows, hidden);
  PTFT_CHECK_DTYPE(OP, rows, at::kInt);
  PTFT_CHECK_SHAPE(OP, rows, n);
  PTFT_CHECK_INPUT(OP, count, hidden);
  PTFT_CHECK_DTYPE(OP, count, at::kInt);
  PTFT_CHECK_SHAPE(OP, count, 1);
  const c10::cuda::OptionalCUDAGuard guard(hidden.device());
  const PtftDtype dt = to_ptft(hidden.scalar_type());
  const auto f32 = hidden.options().dtype(at::kFloat);
  // Labeled rows gathered to the front; the rest zero. The dlogits blocks of rows past the
  // device-side count are zero, so the cuBLAS products below (whose sizes must be known on the
  // host) run over all N rows without a host sync and add nothing for unlabeled rows.
  at::Tensor hc = at::empty_like(hidden);
  PTFT_CHECK_LAUNCH(OP,
                    ptft_linear_cross_entropy_gather_rows(dt, hidden.data_ptr(), rows.data_ptr<int32_t>(),
                                                          count.data_ptr<int32_t>(), n, h, hc.data_ptr(), stream()));
  at::Tensor dh_c = at::zeros({n, h}, f32);
  at::Tensor dw = at::zeros({vocab, h}, f32);
  at::Tensor db = bias.has_value() ? at::zeros({vocab}, f32) : at::Tensor();
  const int64_t rchunk = std::min<int64_t>(n, 8192);
  // blocks of <= 2^24 elements; <= 2^22 columns keeps the dlogits grid's y dim under 65535
  const int64_t vchunk = std::min<int64_t>(
      {vocab, int64_t{1} << 22, std::max<int64_t>(64, ((int64_t{1} << 24) / rchunk) / 64 * 64)});
  // dlogits in the 16-bit dtype (rounded once from fp32), for reduction none also its residual
  // (cross_entropy_plan.h): two GEMMs with fp32 accumulation per operand and block; db sums the
  // fp32 values inside the kernel
  const int operands = ptft::linear_cross_entropy_bwd_operands(red);
  at::Tensor dlogits = at::empty({operands, rchunk * vchunk}, hidden.options());
  const int64_t row_blocks = (rchunk + 63) / 64;
  at::Tensor db_part = bias.has_value() ? at::empty({row_blocks * vchunk}, f32) : at::Tensor();
  for (int64_t r0 = 0; r0 < n; r0 += rchunk) {
    const int64_t nr = std::min(rchunk, n - r0);
    for (int64_t v0 = 0; v0 < vocab; v0 += vchunk) {
      const int64_t nv = std::min(vchunk, vocab - v0);
      std::vector<at::Tensor> d;  // dense (nr, nv) each: the value, then the residual
      for (int k = 0; k < operands; ++k) d.push_back(dlogits[k].narrow(0, 0, nr * nv).view({nr, nv}));
      const at::Tensor part =
          bias.has_value() ? db_part.narrow(0, 0, (nr + 63) / 64 * nv).view({-1, nv}) : at::Tensor();
      PTFT_CHECK_LAUNCH(
          OP, ptft_linear_cross_entropy_dlogits(
                  dt, hidden.data_ptr(), weight.data_ptr(), ptr_or_null(bias), labels.data_ptr<int64_t>(),
                  rows.data_ptr<int32_t>(), count.data_ptr<int32_t>(), lse.data_ptr<float>(), grad.data_ptr<float>(),
                  red, n, vocab, h, static_cast<float>(label_smoothing), static_cast<float>(z_loss), r0, nr, v0, nv,
                  d[0].data_ptr(), operands > 1 ? d[1].data_ptr() : nullptr,
                  bias.has_value() ? part.data_ptr<float>() : nullptr, stream()));
      const at::Tensor w_blk = weight.narrow(0, v0, nv), h_blk = hc.narrow(0, r0, nr);
      at::Tensor dh_blk = dh_c.narrow(0, r0, nr), dw_blk = dw.narrow(0, v0, nv);
      for (const at::Tensor& dk : d) {
        dh_blk.add_(at::mm(dk, w_blk, at::kFloat));
        dw_blk.add_(at::mm(dk.t(), h_blk, at::kFloat));
      }
      if (bias.has_value()) db.narrow(0, v0, nv).add_(part.sum(0));
    }
  }
  if (red != 0) {  // the scalar loss gradient, / labeled count for mean (device-side, no sync)
    at::Tensor g = grad.reshape({});
    if (red == 2) g = g / count.reshape({}).clamp_min(1).to(at::kFloat);
    dh_c.mul_(g);
    dw.mul_(g);
    if (bias.has_value()) db.mul_(g);
  }
  at::Tensor dhidden = at::zeros_like(hidden);
  PTFT_CHECK_LAUNCH(
      OP, ptft_linear_cross_entropy_scatter_rows(dt, dh_c.data_ptr<float>(), rows.data_ptr<int32_t>(),
                                                 count.data_ptr<int32_t>(), n, h, dhidden.data_ptr(), stream()));
  return {dhidden, dw.to(weight.scalar_type()),
          bias.has_value() ? db.to(bias->scalar_type()) : hidden.new_empty({0})};
}

// ---------------------------------------------------------------------------------- LoRA
void lora_linear_check(const char* OP, const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                       const at::Tensor& lora_a, const at::Tensor& lora_b) {
  PTFT_CHECK_CUDA(OP, x);
  PTFT_CHECK_CONTIGUOUS(OP, x);
  PTFT_CHECK_HALF(OP, x);
  PTFT_CHECK_DIM(OP, x, 2);
  const int64_t in = x.size(1);
  for (const auto& [name, t] : {Named{"weight", &weight}, Named{"lora_a", &lora_a}, Named{"lora_b", &lora_b}}) {
    PTFT_CHECK_INPUT_N(OP, *t, name, x);
    PTFT_CHECK_DTYPE_N(OP, *t, name, x.scalar_type());
    PTFT_CHECK_DIM_N(OP, *t, name, 2);
  }
  const int64_t out = weight.size(0), r = lora_a.size(0);
  TORCH_CHECK_VALUE(weight.size(1) == in, OP, ": weight must be (out, in) with in = ", in, ", got ", weight.sizes());
  TORCH_CHECK_VALUE(lora_a.size(1) == in && r >= 1, OP, ": lora_a must be (r, in) with in = ", in, ", r >= 1, got ",
                    lora_a.sizes());
  PTFT_CHECK_SHAPE(OP, lora_b, out, r);
  if (bias.has_value()) {
    PTFT_CHECK_INPUT_N(OP, (*bias), "bias", x);
    PTFT_CHECK_DTYPE_N(OP, (*bias), "bias", x.scalar_type());
    PTFT_CHECK_SHAPE_N(OP, (*bias), "bias", out);
  }
}

std::tuple<at::Tensor, at::Tensor> lora_linear_fwd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                                                   const at::Tensor& lora_a, const at::Tensor& lora_b,
                                                   const OptTensor& rng, double scaling, double dropout_p) {
  constexpr const char* OP = "ptft_fast::lora_linear_fwd";
  lora_linear_check(OP, x, weight, bias, lora_a, lora_b);
  const PtftDropout drop = dropout_arg(OP, rng, dropout_p, x);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t m = x.size(0), in = x.size(1), out = weight.size(0), r = lora_a.size(0);
  const PtftDtype dt = to_ptft(x.scalar_type());
  // frozen projection on cuBLAS, kept in fp32 so that y is rounded once, in the up kernel
  const at::Tensor base = at::mm(x, weight.t(), at::kFloat);
  at::Tensor u = at::empty({2, m, r}, x.options());  // u = u[0] + u[1] (16-bit hi + lo pair)
  at::Tensor y = at::empty({m, out}, x.options());
  PTFT_CHECK_LAUNCH(OP, ptft_lora_linear_down(dt, x.data_ptr(), lora_a.data_ptr(), u[0].data_ptr(), u[1].data_ptr(), m,
                                              in, r, drop, stream()));
  PTFT_CHECK_LAUNCH(
      OP, ptft_lora_linear_up_add(dt, u[0].data_ptr(), u[1].data_ptr(), lora_b.data_ptr(), base.data_ptr<float>(),
                                  ptr_or_null(bias), y.data_ptr(), m, out, r, static_cast<float>(scaling), stream()));
  return {y, u};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_a,
    const at::Tensor& lora_b, const at::Tensor& u, const OptTensor& rng, double scaling, double dropout_p,
    bool weight_grad, bool bias_grad) {
  constexpr const char* OP = "ptft_fast::lora_linear_bwd";
  lora_linear_check(OP, x, weight, std::nullopt, lora_a, lora_b);
  const int64_t m = x.size(0), out = weight.size(0), r = lora_a.size(0);
  PTFT_CHECK_INPUT(OP, dy, x);
  PTFT_CHECK_DTYPE(OP, dy, x.scalar_type());
  PTFT_CHECK_SHAPE(OP, dy, m, out);
  PTFT_CHECK_INPUT(OP, u, x);
  PTFT_CHECK_DTYPE(OP, u, x.scalar_type());
  PTFT_CHECK_SHAPE(OP, u, 2, m, r);
  const PtftDropout drop = dropout_arg(OP, rng, dropout_p, x);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const PtftDtype dt = to_ptft(x.scalar_type());
  const auto s = static_cast<float>(scaling);
  // Low-rank chain: du = s · dy B (m, r); dB = s · dyᵀ (u_hi + u_lo); dA = duᵀ dropout(x).
  const at::Tensor du = at::mm(dy, lora_b, at::kFloat).mul_(s).to(x.scalar_type());
  const at::Tensor dlora_b =
      at::mm(dy.t(), u[0], at::kFloat).add_(at::mm(dy.t(), u[1], at::kFloat)).mul_(s).to(x.scalar_type());
  at::Tensor xd = x;
  if (drop.rng != nullptr) {
    xd = at::empty_like(x);
    PTFT_CHECK_LAUNCH(OP, ptft_dropout_apply(dt, x.data_ptr(), xd.data_ptr(), x.numel(), drop, stream()));
  }
  const at::Tensor dlora_a = at::mm(du.t(), xd, at::kFloat).to(x.scalar_type());
  // dx = dy W + dropout(du A), the mask regenerated from the same {seed, offset}; both products
  // in fp32 so that dx is rounded once
  const at::Tensor dx_base = at::mm(dy, weight, at::kFloat);
  const at::Tensor t = at::mm(du, lora_a, at::kFloat);
  at::Tensor dx = at::empty_like(x);
  PTFT_CHECK_LAUNCH(OP, ptft_lora_linear_dx_combine(dt, dx_base.data_ptr<float>(), t.data_ptr<float>(), dx.data_ptr(),
                                                    x.numel(), drop, stream()));
  at::Tensor dweight = weight_grad ? at::mm(dy.t(), x, at::kFloat).to(x.scalar_type()) : x.new_empty({0});
  at::Tensor dbias = bias_grad ? dy.sum(0, /*keepdim=*/false, at::kFloat).to(x.scalar_type()) : x.new_empty({0});
  return {dx, dweight, dbias, dlora_a, dlora_b};
}

}  // namespace

// Schemas, declared once. Python registers autograd and fake implementations for them.
TORCH_LIBRARY(ptft_fast, m) {
  m.def(
      "layer_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, Tensor? rng, float eps, bool rms, "
      "float dropout_p, bool store_h) -> (Tensor y, Tensor h, Tensor mean, Tensor rstd)");
  m.def(
      "layer_norm_bwd(Tensor dy, Tensor? dh, Tensor h, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, "
      "Tensor? rng, bool rms, float dropout_p, bool has_residual) -> (Tensor dx, Tensor dresidual, Tensor dweight, "
      "Tensor dbias)");
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
      "Tensor? key_padding_mask, Tensor? attn_bias, Tensor? rel_lut, Tensor? rel_table, Tensor? prefix_lengths, "
      "Tensor? rng, int max_seqlen_q, int max_seqlen_k, bool causal, float dropout_p, float softmax_scale) -> "
      "(Tensor out, Tensor lse)");
  m.def(
      "attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? cu_seqlens_q, "
      "Tensor? cu_seqlens_k, Tensor? key_padding_mask, Tensor? attn_bias, Tensor? rel_lut, Tensor? rel_table, "
      "Tensor? prefix_lengths, Tensor? rng, int max_seqlen_q, int max_seqlen_k, bool causal, float dropout_p, "
      "float softmax_scale, bool bias_grad, bool rel_grad) -> (Tensor dq, Tensor dk, Tensor dv, Tensor dbias, "
      "Tensor drel_table)");
  m.def(
      "linear_cross_entropy_fwd(Tensor hidden, Tensor weight, Tensor labels, Tensor? bias, int ignore_index, float "
      "label_smoothing, "
      "float z_loss, str reduction) -> (Tensor loss, Tensor lse, Tensor rows, Tensor count)");
  m.def(
      "linear_cross_entropy_bwd(Tensor grad, Tensor hidden, Tensor weight, Tensor labels, Tensor? bias, Tensor lse, "
      "Tensor rows, "
      "Tensor count, float label_smoothing, float z_loss, str reduction) -> (Tensor dhidden, Tensor dweight, "
      "Tensor dbias)");
  m.def(
      "lora_linear_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor lora_a, Tensor lora_b, Tensor? rng, float "
      "scaling, "
      "float dropout_p) -> (Tensor y, Tensor u)");
  m.def(
      "lora_linear_bwd(Tensor dy, Tensor x, Tensor weight, Tensor lora_a, Tensor lora_b, Tensor u, Tensor? rng, "
      "float scaling, float dropout_p, bool weight_grad, bool bias_grad) -> (Tensor dx, Tensor dweight, "
      "Tensor dbias, Tensor dlora_a, Tensor dlora_b)");
}

TORCH_LIBRARY_IMPL(ptft_fast, CUDA, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd);
  m.impl("layer_norm_bwd", &layer_norm_bwd);
  m.impl("attention_fwd", &attention_fwd);
  m.impl("attention_bwd", &attention_bwd);
  m.impl("linear_cross_entropy_fwd", &linear_cross_entropy_fwd);
  m.impl("linear_cross_entropy_bwd", &linear_cross_entropy_bwd);
  m.impl("lora_linear_fwd", &lora_linear_fwd);
  m.impl("lora_linear_bwd", &lora_linear_bwd);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "ptft_fast CUDA kernels; the ops live in torch.ops.ptft_fast";
  m.attr("__version__") = PTFT_VERSION;
  m.def("build_info", []() {
    pybind11::dict info;
    info["version"] = PTFT_VERSION;
    info["cuda_runtime"] = CUDART_VERSION;
    info["compiled_archs"] = std::string(ptft_compiled_archs());
    return info;
  });
  m.def("capabilities", []() {
    pybind11::dict caps;
    caps["attention_head_dims"] = std::vector<int>{32, 64, 128};
    caps["attention_max_relative_buckets"] = ptft_attention_max_buckets();
    caps["attention_dtypes"] = std::vector<std::string>{"float16", "bfloat16"};
    caps["layer_norm_dtypes"] = std::vector<std::string>{"float32", "float16", "bfloat16"};
    caps["layer_norm_max_hidden"] = ptft_layer_norm_max_hidden();
    caps["linear_cross_entropy_dtypes"] = std::vector<std::string>{"float16", "bfloat16"};
    caps["lora_linear_dtypes"] = std::vector<std::string>{"float16", "bfloat16"};
    return caps;
  });
}

// How the linear cross-entropy backward (binding.cpp) turns d(logits) into dhidden and dweight,
// per (row chunk x vocab chunk) block: ptft_linear_cross_entropy_dlogits writes d(logits) once in
// the 16-bit dtype — and for reduction none also its rounding residual (cross_entropy.cu says
// why) — and each of those operands D takes two GEMMs with fp32 accumulation, dh += D W and
// dW += Dᵀ H. Plain host code (no CUDA, no torch): tests/csrc/host_model.cpp exports it.
#pragma once

namespace ptft {

// reduction codes of binding.cpp's reduction_code: 0 none, 1 sum, 2 mean
constexpr int kReductionNone = 0;

// 16-bit d(logits) operands per block: 1 (sum, mean), 2 (none: value + rounding residual).
constexpr int linear_cross_entropy_bwd_operands(int reduction) { return reduction == kReductionNone ? 2 : 1; }

}  // namespace ptft

"""Pieces shared by the training-step benchmarks (``bench_models_cpu``, ``bench_train_e2e``).

Batches with fixed seeds, the timed optimizer step (zero_grad, forward, backward, AdamW step),
our model loaded from a transformers model's saved weights, and the step-0 loss check that makes
a comparison honest: every provider must start from the same loss as the baseline, or the
benchmark stops with :class:`LossMismatchError` (it is an error, never a row).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable

import torch
from torch import nn

from ptft_fast.benchmarks.harness import Unavailable

MASK_TOKEN = 103  # BERT's [MASK]
# Step-0 loss tolerance vs the baseline, per compute dtype: |got - ref| <= atol + rtol * |ref|.
# fp32: both sides run the same math in a different order (fused ops, masked-row head), ~1e-6;
# bf16 autocast: ~3 significant digits per matmul, accumulated over the layers.
LOSS_TOL = {"float32": (1e-4, 1e-4), "bfloat16": (2e-2, 1e-2), "float16": (1e-2, 5e-3)}


class LossMismatchError(RuntimeError):
    """A provider's step-0 loss differs from the baseline's: not the same model, batch or math."""


def transformers_module():
    """``import transformers``, or Unavailable saying it is missing."""
    try:
        import transformers
    except ImportError as exc:
        raise Unavailable(f"transformers is not installed: {exc}") from exc
    return transformers


def mlm_batch(vocab: int, batch: int, seq: int, mask_rate: float = 0.15) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask/labels (batch, seq): ``mask_rate`` of the tokens replaced by
    [MASK] and labeled, the rest labeled -100 (ignored)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=gen)
    masked = torch.rand(batch, seq, generator=gen) < mask_rate
    labels = torch.where(masked, ids, -100)
    inputs = ids.masked_fill(masked, MASK_TOKEN)
    return dict(input_ids=inputs, attention_mask=torch.ones_like(ids), labels=labels)


def clm_batch(vocab: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """input_ids/labels (batch, seq), labels = input_ids (the models shift them)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    return dict(input_ids=ids, labels=ids.clone())


def optimizer_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    autocast: torch.dtype | None = None,
    backend: str | None = None,
    call: Callable | None = None,
) -> Callable[[], torch.Tensor]:
    """A zero-argument training step on ``batch``: zero_grad, forward (``call`` or ``model``,
    under bf16/fp16 autocast when ``autocast`` is given, under ``use_backend(backend)`` when
    given), backward, AdamW step over the trainable parameters. Returns the loss (not synced)."""
    from ptft_fast.ops import use_backend

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    forward = model if call is None else call

    def step():
        opt.zero_grad(set_to_none=True)
        with contextlib.ExitStack() as ctx:
            if backend is not None:
                ctx.enter_context(use_backend(backend))
            if autocast is not None:
                ctx.enter_context(torch.autocast(device.type, dtype=autocast))
            loss = forward(**batch).loss
            loss.backward()
        opt.step()
        return loss

    return step


def check_loss(provider: str, got: float, ref: float, dtype: str, baseline: str = "baseline") -> None:
    """Raise LossMismatchError unless |got - ref| <= atol + rtol·|ref| (LOSS_TOL[dtype])."""
    atol, rtol = LOSS_TOL[dtype]
    if not abs(got - ref) <= atol + rtol * abs(ref):
        raise LossMismatchError(
            f"step-0 loss of {provider} is {got:.6f}, {baseline} has {ref:.6f} "
            f"(tolerance {atol:g} + {rtol:g}·|ref|, {dtype}): not the same model, batch or math"
        )


def save_hf(hf_model: nn.Module) -> tempfile.TemporaryDirectory:
    """Save a transformers model to a temporary directory (config.json + model.safetensors)."""
    tmp = tempfile.TemporaryDirectory(prefix="ptft-bench-")
    hf_model.save_pretrained(tmp.name)
    return tmp


def ptft_from_hf(path: str | os.PathLike) -> nn.Module:
    """Our model loaded from a transformers model's saved weights (ptft_fast.hf)."""
    from ptft_fast.hf import load_pretrained

    return load_pretrained(path)[0]

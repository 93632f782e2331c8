"""The workloads of the kernel report card: each op's launchers at the shapes the GPU benchmarks use
and at edge shapes, run on ``meta`` tensors inside ``recording_launches`` (nothing executes; every
launch is recorded with the arguments a real launch at that shape would pass), and the analytic
lower-bound time of the op at that shape for this design and for the peer design.

Lower bounds: max(FLOPs / peak, minimum bytes / bandwidth) at the H100 SXM data-sheet peaks
(bf16 dense 989 TFLOP/s, fp32 67 TFLOP/s without tensor cores, 3.35 TB/s), forward + backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

from ptft_fast.kernels import attention as attn_k
from ptft_fast.kernels import attention_bwd as attn_bwd_k
from ptft_fast.kernels import cross_entropy as ce_k
from ptft_fast.kernels import layer_norm as ln_k
from ptft_fast.kernels import lora as lora_k

PEAK_FLOPS = {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12}
PEAK_BYTES = 3.35e12
BF16, FP32 = torch.bfloat16, torch.float32


@dataclass(frozen=True)
class Case:
    """op at one shape: ``run`` calls its launchers (forward and backward) on meta tensors;
    ``ours``/``peer`` are (FLOPs, bytes) of this design and of ``peer_name``'s at that shape
    (None for edge shapes, which only check that every kernel compiles within bounds); ``archs``:
    the GPUs it is compiled for (sm_80 for one benchmark shape and the edges of each op, which
    compiles every kernel for it; sm_90 for all)."""

    op: str
    label: str
    dtype: torch.dtype
    run: Callable[[], None]
    ours: tuple[float, float] | None = None
    peer: tuple[float, float] | None = None
    peer_name: str = ""
    archs: tuple[int, ...] = (90,)

    def lower_bound_us(self, flops_bytes) -> float | None:
        if flops_bytes is None:
            return None
        flops, nbytes = flops_bytes
        return 1e6 * max(flops / PEAK_FLOPS[self.dtype], nbytes / PEAK_BYTES)


def _t(*shape, dtype=BF16) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


# ------------------------------------------------------------------------- linear cross-entropy


def _ce_run(n, hidden, vocab, dtype, bias, smoothing=0.0, z_loss=0.0):
    def run():
        h, w = _t(n, hidden, dtype=dtype), _t(vocab, hidden, dtype=dtype)
        b = _t(vocab, dtype=dtype) if bias else None
        labels = _t(n, dtype=torch.int64)
        rows, count = ce_k.pack_labeled_rows(labels, -100)
        _, lse = ce_k.linear_cross_entropy_fwd(h, w, b, labels, rows, count, smoothing, z_loss)
        ce_k.linear_cross_entropy_bwd(h, w, b, labels, rows, count, lse, _t(n, dtype=FP32), smoothing, z_loss)

    return run


def _ce_bounds(n, hidden, vocab, labeled, size):
    """(ours, Liger 0.8.5's) FLOPs and DRAM bytes; W (V x H) does not fit in L2 at these shapes,
    so every GEMM that streams it reads it again.

    Ours drops unlabeled rows before any matmul: 4 GEMMs over labeled rows. Bytes: W read by the
    forward and, per chunk holding labeled rows, by the d(logits) and dh GEMMs; d(logits) written
    once, read twice; dW written once (one chunk) or accumulated in fp32 per chunk, then cast.
    Liger computes the gradients in the forward, over every row: 3 GEMMs; chunks of
    next_pow2(N / ceil(V / H)) rows, each reading W twice, writing its logits, reading and writing
    them in place, reading them twice, and adding into dW in W's dtype (read + write)."""
    n_lab = n * labeled
    w = vocab * hidden * size
    w32 = 4 * vocab * hidden
    active = math.ceil(n_lab / ce_k.chunk_rows(n, vocab, size, 128))
    dw = w if active == 1 else w32 * (2 * active - 1) + w32 + w
    ours = (8.0 * n_lab * vocab * hidden, w + 2 * w * active + dw + 3 * n_lab * vocab * size)
    chunks = math.ceil(n / triton.next_power_of_2(math.ceil(n / math.ceil(vocab / hidden))))
    liger = (6.0 * n * vocab * hidden, 2 * w * chunks + 2 * w * chunks + 5 * n * vocab * size)
    return ours, liger


def cross_entropy_cases() -> list[Case]:
    cases = []
    for n, hidden, vocab, labeled, label, archs in (
        (16384, 768, 30522, 0.15, "BERT MLM N=16384 H=768 V=30522, 15% labeled", (90,)),
        (8192, 768, 50257, 1.0, "GPT-2 CLM N=8192 H=768 V=50257, all labeled", (90, 80)),
    ):
        ours, liger = _ce_bounds(n, hidden, vocab, labeled, 2)
        run = _ce_run(n, hidden, vocab, BF16, False)
        cases.append(Case("linear_cross_entropy", label, BF16, run, ours, liger, "Liger", archs))
    edge = _ce_run(1, 1, 1, FP32, True, 0.1, 1e-4)
    cases.append(Case("linear_cross_entropy", "edge N=H=V=1", FP32, edge, archs=(90, 80)))
    cases.append(Case("linear_cross_entropy", "edge N=7 H=1 V=67", BF16, _ce_run(7, 1, 67, BF16, True)))
    return cases


# ------------------------------------------------------------------------------------ attention


def _attn_run(batch, seq, heads, kv_heads, dim, dtype, causal, *, kpm=False, bias=False, rel=False, p=0.0,
              varlen=False, prefix=False):  # fmt: skip
    def run():
        n = batch * seq
        q, o = _t(n, heads, dim, dtype=dtype), _t(n, heads, dim, dtype=dtype)
        k, v = _t(n, kv_heads, dim, dtype=dtype), _t(n, kv_heads, dim, dtype=dtype)
        cu = _t(batch + 1, dtype=torch.int32) if varlen else None
        kw = dict(
            batch=batch, max_q=seq, max_k=seq, cu_q=cu, cu_k=cu, causal=causal,
            kpm=_t(batch, seq, dtype=torch.int8) if kpm else None,
            bias4=_t(1, heads, seq, seq, dtype=dtype) if bias else None,
            rel_lut=_t(2 * seq - 1, dtype=torch.int32) if rel else None,
            rel_table=_t(32, heads, dtype=dtype) if rel else None, p=p, seed=1234, scale=dim**-0.5,
            prefix=_t(batch, dtype=torch.int32) if prefix else None,
        )  # fmt: skip
        _, lse = attn_k.attention_fwd(q, k, v, **kw)
        for deterministic in (False, True):
            attn_bwd_k.attention_bwd(
                _t(n, heads, dim, dtype=dtype), q, k, v, o, lse, **kw, bias_grad=bias, rel_grad=rel,
                deterministic=deterministic,
            )  # fmt: skip

    return run


def _attn_bounds(batch, seq, heads, dim, causal, size):
    """(ours, FlashAttention-2's) forward + backward: 2 GEMMs forward, 5 backward (dQ summed over
    key blocks by fp32 atomics, as FA2 does; they stay in L2 and are not counted as DRAM bytes);
    DRAM traffic: Q, K, V, O read/written once forward, Q, K, V, O, dO read and dQ, dK, dV written
    once backward. The same design on both sides, so the same bound: the card shows the kernels,
    not the design, decide the difference."""
    frac = 0.5 if causal else 1.0
    gemm = 2.0 * batch * heads * seq * seq * dim * frac
    io = batch * seq * heads * dim * size
    bound = (7 * gemm, 4 * io + 8 * io)
    return bound, bound


def attention_cases() -> list[Case]:
    cases = []
    for seq, dim, causal, archs in (
        (1024, 64, True, (90,)),
        (1024, 64, False, (90,)),
        (4096, 128, True, (90, 80)),
    ):
        heads, batch = 2048 // dim, 16384 // seq
        ours, fa2 = _attn_bounds(batch, seq, heads, dim, causal, 2)
        label = f"B={batch} T={seq} H={heads} D={dim}{' causal' if causal else ''}"
        run = _attn_run(batch, seq, heads, heads, dim, BF16, causal)
        cases.append(Case("attention", label, BF16, run, ours, fa2, "FlashAttention-2", archs))
    cases.append(
        Case("attention", "BERT B=32 T=512 H=12 D=64 padding mask, dropout 0.1", BF16,
             _attn_run(32, 512, 12, 12, 64, BF16, False, kpm=True, p=0.1))
    )  # fmt: skip
    cases.append(
        Case("attention", "T5 B=16 T=512 H=8 D=64 relative bias", BF16,
             _attn_run(16, 512, 8, 8, 64, BF16, False, rel=True))
    )  # fmt: skip
    cases.append(
        Case("attention", "varlen GQA 8/2 D=128 causal, dense bias, dropout", BF16,
             _attn_run(8, 1024, 8, 2, 128, BF16, True, bias=True, p=0.1, varlen=True))
    )  # fmt: skip
    cases.append(
        Case("attention", "packed prefix LM: varlen D=64 causal + prefix lengths", BF16,
             _attn_run(64, 128, 12, 12, 64, BF16, True, varlen=True, prefix=True), archs=(90, 80))
    )  # fmt: skip
    edge = _attn_run(1, 1, 1, 1, 32, FP32, True)
    cases.append(Case("attention", "edge one row D=32", FP32, edge, archs=(90, 80)))
    return cases


# ----------------------------------------------------------------------------------- layer norm


def _ln_run(n, hidden, dtype):
    def run():
        x, r = _t(n, hidden, dtype=dtype), _t(n, hidden, dtype=dtype)
        w, b = _t(hidden, dtype=dtype), _t(hidden, dtype=dtype)
        _, h, mean, rstd = ln_k.layer_norm_fwd(x, w, b, 1e-5, r, False, 0.1, 1234, True, dtype)
        ln_k.layer_norm_bwd(x, h, w, mean, rstd, x, False, 0.1, 1234, dtype, dtype)

    return run


def layer_norm_cases() -> list[Case]:
    cases = []
    for hidden in (768, 4096, 8192):
        io = 8.0 * 16384 * hidden * 2  # x, residual in; y, h out; dy, dh_out, h in; dx, dres out
        label = f"N=16384 H={hidden} residual + dropout"
        archs = (90, 80) if hidden == 8192 else (90,)
        run = _ln_run(16384, hidden, BF16)
        cases.append(Case("layer_norm", label, BF16, run, (0, io), (0, io), "Apex/Liger", archs))
    cases.append(Case("layer_norm", "edge N=H=1", FP32, _ln_run(1, 1, FP32), archs=(90, 80)))
    return cases


# ----------------------------------------------------------------------------------------- LoRA


def _lora_run(n, d_in, d_out, rank, dtype, p):
    def run():
        x, w = _t(n, d_in, dtype=dtype), _t(d_out, d_in, dtype=dtype)
        a, b = _t(rank, d_in, dtype=dtype), _t(d_out, rank, dtype=dtype)
        _, t = lora_k.lora_linear_fwd(x, w, _t(d_out, dtype=dtype), a, b, 2.0, p, 1234)
        lora_k.lora_linear_bwd(_t(n, d_out, dtype=dtype), x, t, w, a, b, 2.0, p, 1234)

    return run


def _lora_bounds(n, d_in, d_out, rank, size):
    """(ours, cuBLAS + PEFT's composition), frozen W: y and dx matmuls plus the rank-r terms; the
    composition also writes and re-reads dropout(x), the (N, r) product and the low-rank y term."""
    flops = 4.0 * n * d_in * d_out + 6.0 * 2 * n * rank * (d_in + d_out)
    ours = 2 * (n * d_in + n * d_out + d_in * d_out) * size
    return (flops, ours), (flops, ours + 2 * (n * d_in + 2 * n * d_out) * size)


def lora_cases() -> list[Case]:
    cases = []
    for n, dim in ((8192, 4096), (8192, 768)):
        ours, peft = _lora_bounds(n, dim, dim, 16, 2)
        label = f"N={n} {dim}x{dim} r=16 dropout 0.1"
        run = _lora_run(n, dim, dim, 16, BF16, 0.1)
        archs = (90, 80) if dim == 4096 else (90,)
        cases.append(Case("lora_linear", label, BF16, run, ours, peft, "cuBLAS+PEFT", archs))
    edge = _lora_run(1, 1, 1, 1, FP32, 0.5)
    cases.append(Case("lora_linear", "edge N=1 1x1 r=1", FP32, edge, archs=(90, 80)))
    return cases


def all_cases() -> list[Case]:
    return cross_entropy_cases() + attention_cases() + layer_norm_cases() + lora_cases()

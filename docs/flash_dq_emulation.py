"""CPU emulation behind docs/gpu.md's note on `test_attention_varlen`: how often does a flash-style
dQ (dS rounded to bf16, fp32 accumulation, the dsum term from the bf16 output) break the 2x rule
against PyTorch's math SDPA, which keeps fp32 intermediates for bf16 inputs?

Run: ``python docs/flash_dq_emulation.py [--hilo]`` (``--hilo``: dS carried as a bf16 hi + lo pair).
Shapes: the test's sequences (query lengths 1, 7, 64, 31; key lengths 3, 7, 127, 16), 4 heads,
head dim 64, a float bias; fp64 oracle; 40 seeds.
"""

from __future__ import annotations

import sys

import torch

BF = torch.bfloat16
LQ, LK, HEADS, D, SEEDS = [1, 7, 64, 31], [3, 7, 127, 16], 4, 64, 40


def rnd(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bf16, held in fp64."""
    return t.to(BF).double()


def one_head(g: torch.Generator, tq: int, tk: int, hilo: bool) -> tuple[float, float]:
    """(flash-style dq max error, math-backend dq max error) for one (Tq, Tk) head vs fp64."""
    q, do = (rnd(torch.randn(tq, D, generator=g)) for _ in range(2))
    k, v = (rnd(torch.randn(tk, D, generator=g)) for _ in range(2))
    bias = rnd(torch.randn(tq, tk, generator=g))
    scale = D**-0.5
    p = torch.softmax(q @ k.T * scale + bias, -1)
    exact = p * (do @ v.T - (do * (p @ v)).sum(-1, keepdim=True)) @ k * scale
    q, k, v, bias, do = (t.float() for t in (q, k, v, bias, do))
    p32 = torch.softmax(q @ k.T * scale + bias, -1)
    o32 = p32 @ v
    math = rnd(p32 * (do @ v.T - (do * o32).sum(-1, keepdim=True)) @ k * scale)
    ds = p32 * (do @ v.T - (do * rnd(o32).float()).sum(-1, keepdim=True))
    hi = rnd(ds).float()
    dq = hi @ k + (rnd(ds - hi).float() @ k if hilo else 0.0)
    flash = rnd(dq * scale)
    return (flash - exact).abs().max().item(), (math - exact).abs().max().item()


def main() -> None:
    hilo = "--hilo" in sys.argv
    ratios = []
    for seed in range(SEEDS):
        g = torch.Generator().manual_seed(seed)
        errs = [one_head(g, tq, tk, hilo) for tq, tk in zip(LQ, LK, strict=True) for _ in range(HEADS)]
        ratios.append(max(e[0] for e in errs) / max(e[1] for e in errs))
    r = torch.tensor(ratios)
    print(
        f"flash/math dq max-error ratio, {SEEDS} seeds{' (dS hi + lo)' if hilo else ''}: "
        f"median {r.median():.2f}, max {r.max():.2f}, share above 2: {(r > 2).float().mean():.2f}"
    )


if __name__ == "__main__":
    main()

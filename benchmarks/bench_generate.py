"""Generation on CPU: KV cache vs re-running the whole sequence (issue 7).

A tiny GPT (ptft_fast "gpt-tiny" widened to 6 layers, hidden 384, 6 heads, FFN 1536, vocab 1024:
11M parameters) greedily generates 256 new tokens after a 16-token prompt, batch 1, with and
without the KV cache, at torch's default thread count. At hidden 64 a cached step is pure
Python/dispatch overhead (~5 ms), so the ratio would say more about per-call overhead than about
the cache; hence the wider model. The two token sequences are checked identical before timing;
the ratio column is the speed-up of the cache over the no-cache baseline, both measured in this
run.

Run: ``python -m ptft_fast.benchmarks.bench_generate [--quick]`` → table on stdout, rows appended
to ``benchmarks/results/generate.csv``. ``--quick``: 32 new tokens, one thread
(``harness.single_thread_quick``).
"""

from __future__ import annotations

import torch

from ptft_fast.benchmarks.harness import Case, run_case, single_thread_quick

KIND = "train"
PROMPT, NEW = 16, 256
SIZE = dict(num_layers=6, hidden_size=384, num_heads=6, ffn_size=1536)


def _setup(device: torch.device, new: int):
    from ptft_fast.generate import GenerationConfig, generate
    from ptft_fast.models import from_name

    torch.manual_seed(0)
    model = from_name("gpt-tiny", max_position_embeddings=PROMPT + NEW, **SIZE).to(device).eval()
    ids = torch.randint(3, 1000, (1, PROMPT), generator=torch.Generator().manual_seed(0)).to(device)
    cfg = GenerationConfig(max_new_tokens=new)
    cached = generate(model, ids, config=cfg, use_cache=True)
    plain = generate(model, ids, config=cfg, use_cache=False)
    if not torch.equal(cached, plain) or cached.shape[1] != new:
        raise RuntimeError("bench_generate: cached and uncached generation disagree")
    return lambda use_cache: lambda: generate(model, ids, config=cfg, use_cache=use_cache)


@single_thread_quick
def suite(device: torch.device, quick: bool) -> list[dict]:
    new = 32 if quick else NEW  # quick: a smoke run (no-cache cost grows with the square of the length)
    make = _setup(device, new)
    case = Case(
        op="generate_greedy",
        shape=f"gpt L6 H384 B=1 prompt={PROMPT} new={new} threads={torch.get_num_threads()}",
        dtype="float32",
        mode="fwd",
        tokens=new,
    )
    providers = {"no-cache": lambda: make(False), "kv-cache": lambda: make(True)}
    return run_case(
        case, providers, device, baseline="no-cache", warmup=1, repeats=3 if quick else 5, memory=False
    )


if __name__ == "__main__":
    import sys

    from ptft_fast.benchmarks.harness import RESULTS_DIR, format_table, write_csv

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = suite(dev, quick="--quick" in sys.argv)
    print(format_table(result))
    write_csv(result, RESULTS_DIR / "generate.csv")

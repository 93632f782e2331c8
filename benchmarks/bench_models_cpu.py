"""CPU training step: ptft_fast models vs transformers (issue 3, item 6).

BERT MLM (4 layers, hidden 256, 4 heads, FFN 1024, vocab 30522, batch 8×128, 15% of tokens
masked) vs ``BertForMaskedLM``, and a GPT-2-style CLM of the same size (vocab 50257) vs
``GPT2LMHeadModel``; one AdamW step each (zero_grad, forward, backward, step). Same numerics: our
model is loaded from the transformers model's saved weights, both get the same batch and the same
optimizer settings, dropout is 0 in both, and the step-0 losses are checked equal before timing.
Tokens/s and peak memory are measured in the same run (ratio vs transformers).

Peak memory is the peak RSS growth during one steady-state step (after a warm-up step, so the
optimizer state exists for both), measured by the harness's ``cpu_peak_memory_mb`` (high-water
mark reset through ``/proc/self/clear_refs``, glibc thresholds pinned), the same for both.

On a CPU shared with other jobs, ``--threads 1`` gives the stable numbers: with more intra-op
threads than the cores the scheduler gives us, every OpenMP region waits for a descheduled
thread, which inflates small ops (layer norm, adds) by 10-100× and compresses the ratio toward 1.

Run: ``python -m ptft_fast.benchmarks.bench_models_cpu [--quick] [--threads N]`` → table on stdout, rows
appended to ``benchmarks/results/models_cpu.csv``.
``--quick`` (batch 2×64, 4 rounds) runs with one thread (``harness.single_thread_quick``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ptft_fast.benchmarks.harness import (
    RESULTS_DIR,
    Case,
    cpu_peak_memory_mb,
    emit,
    environment,
    format_table,
    single_thread_quick,
    streaming,
)
from ptft_fast.benchmarks.train_common import (
    check_loss,
    clm_batch,
    mlm_batch,
    optimizer_step,
    ptft_from_hf,
    save_hf,
    transformers_module,
)

KIND = "train"


def _pair(hf_model, batch: dict[str, torch.Tensor]):
    """(hf model, our model loaded from its weights), step-0 losses checked equal."""
    with save_hf(hf_model) as tmp:
        ours = ptft_from_hf(tmp)
    with torch.no_grad():
        ref, got = hf_model(**batch).loss, ours(**batch).loss
    check_loss("ptft_fast", got.item(), ref.item(), "float32", baseline="transformers")
    return hf_model, ours


def _rows(case: Case, mode: str, times: dict[str, list[float]], baseline: str, env: dict) -> list[dict]:
    rows = []
    base = statistics.median(times[baseline])
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10, method="inclusive")
        p50 = statistics.median(ts)
        paired = statistics.median(b / t for b, t in zip(times[baseline], ts, strict=True))
        rows.append(
            dict(
                op=case.op, provider=name, shape=case.shape, dtype=case.dtype, mode=mode,
                p20_ms=q[1], p50_ms=p50, p80_ms=q[7], tokens_per_s=case.tokens / (p50 / 1e3),
                baseline=baseline, ratio_vs_baseline=base / p50, paired_ratio=paired, **env,
            )
        )  # fmt: skip
    return rows


def _interleaved(case: Case, steps: dict, device, *, baseline: str, warmup: int, repeats: int) -> list[dict]:
    """Time the providers' steps alternately (ABBA order), so load from other processes on a
    shared machine hits both alike. Rows per provider for wall-clock time (mode "step") and for
    the process's CPU time (mode "step-cputime", which descheduling by other processes does not
    inflate); p20/p50/p80, the ratio of p50s as in ``harness.run_case``, and the median of the
    per-round ratios."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        for name in list(steps)[:: 1 if r % 2 == 0 else -1]:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name]()
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    env = environment(device)
    return _rows(case, "step", wall, baseline, env) + _rows(case, "step-cputime", cpu, baseline, env)


def _case(name: str, hf_model, batch, *, warmup: int, repeats: int, device) -> list[dict]:
    hf_model, ours = _pair(hf_model, batch)
    b, t = batch["input_ids"].shape
    labeled = int((batch["labels"] != -100).sum())
    vocab = hf_model.config.vocab_size
    shape = f"B={b} T={t} H=256 L=4 V={vocab} labeled={labeled} threads={torch.get_num_threads()}"
    case = Case(name, shape, "float32", "step", tokens=b * t)
    steps = {"transformers": optimizer_step(hf_model, batch), "ptft_fast": optimizer_step(ours, batch)}
    memory = {}
    for name, fn in steps.items():
        fn()  # warm-up step: the optimizer state exists before the measured one
        memory[name] = cpu_peak_memory_mb(fn)
    rows = _interleaved(case, steps, device, baseline="transformers", warmup=warmup, repeats=repeats)
    for row in rows:
        row["peak_mem_mb"] = memory[row["provider"]]
        if memory["transformers"] and row["peak_mem_mb"] is not None:
            row["mem_vs_baseline"] = row["peak_mem_mb"] / memory["transformers"]
    return emit(rows)  # the providers are timed interleaved: their rows are finished together


@single_thread_quick
def suite(device: torch.device, quick: bool) -> list[dict]:
    if device.type != "cpu":
        return []
    t = transformers_module()
    torch.manual_seed(0)
    warmup, repeats = (1, 4) if quick else (2, 10)
    batch, seq = (2, 64) if quick else (8, 128)
    size = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    no_drop = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert = t.BertForMaskedLM(t.BertConfig(vocab_size=30522, **size, **no_drop))
    rows = _case(
        "bert_mlm", bert, mlm_batch(30522, batch, seq, 0.15), warmup=warmup, repeats=repeats, device=device
    )
    gpt_cfg = t.GPT2Config(vocab_size=50257, n_embd=256, n_layer=4, n_head=4, n_inner=1024, n_positions=1024)
    gpt_cfg.resid_pdrop = gpt_cfg.embd_pdrop = gpt_cfg.attn_pdrop = 0.0
    gpt = t.GPT2LMHeadModel(gpt_cfg)
    rows += _case(
        "gpt2_clm", gpt, clm_batch(50257, batch, seq), warmup=warmup, repeats=repeats, device=device
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "models_cpu.csv"), help="CSV to append rows to")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with streaming(None if args.quick else args.out):
        rows = suite(torch.device("cpu"), args.quick)
    print(f"torch threads: {torch.get_num_threads()}")
    print(format_table(rows))
    for row in rows:
        if row["provider"] != "transformers":
            print(
                f"{row['op']} [{row['mode']}]: speed {row['ratio_vs_baseline']:.3f}x (ratio of p50s), "
                f"{row['paired_ratio']:.3f}x (median per round); memory {row.get('mem_vs_baseline', float('nan')):.3f}x"
            )
    if not args.quick:
        print(f"rows appended to {args.out}")


if __name__ == "__main__":
    main()

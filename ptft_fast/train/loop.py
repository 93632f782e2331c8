"""What the user sees: the progress bar, metric rows, periodic eval/checkpoints, and the summary
with the price tag (FLOPs, device-hours, energy, cost) and the loss-curve PNG."""

from __future__ import annotations

import math
import time
import warnings

import torch
from tqdm import tqdm

from ptft_fast.train.config import NO_STEP_CAP
from ptft_fast.train.metrics import PowerMeter, plot_loss, power_estimate, price_tag
from ptft_fast.train.objectives import add_stats, export_model
from ptft_fast.train.schedule import planned_steps, seq_len_at
from ptft_fast.train.trainer import idle_threads_hint
from ptft_fast.utils.atomic import atomic_write_json
from ptft_fast.utils.device import device_name, device_peaks

PEAK_KEYS = {"bf16": "bfloat16", "fp16": "float16"}
TRAIN_LOSS_WINDOW = 20  # steps the summary's final train loss is the mean of (fewer in a short run)


def _peak_tflops(trainer) -> float | None:
    peaks = device_peaks(trainer.device)
    if peaks is None:
        return None
    key = PEAK_KEYS.get(trainer.cfg.precision)
    if key is None:
        key = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "float32"
    return peaks.get(key)


def plan_line(cfg) -> str:
    """What the run will train for, printed before the first step: the step count, or the time
    budget (and the step cap, only when ``max_steps`` was given)."""
    if cfg.max_time_s <= 0:
        why = (
            "max_steps"
            if cfg.max_steps
            else "the default; --set max_time_s=SECONDS trains for a time budget instead"
        )
        return f"plan: {cfg.step_limit} steps ({why})"
    cap = (
        f"or max_steps={cfg.max_steps}, whichever comes first"
        if cfg.max_steps
        else "no step cap: max_steps not given"
    )
    return (
        f"plan: train for the time budget max_time_s={cfg.max_time_s:g} ({cap}); learning-rate warm-up "
        "and decay run over the steps that fit in it, estimated from the measured step rate at every "
        "step (metrics column planned_steps)"
    )


def run_loop(trainer) -> dict:
    """Train to ``max_steps`` (or ``max_time_s``); returns the summary (also ``summary.json``)."""
    cfg, log = trainer.cfg, trainer.log
    peak = _peak_tflops(trainer)
    dev_name = device_name(trainer.device)
    meter = PowerMeter()
    limit = cfg.step_limit
    total = None if limit == NO_STEP_CAP else limit  # uncapped: the bar's total follows the plan
    bar = tqdm(total=total, initial=trainer.step, disable=not cfg.progress, desc=cfg.objective)
    window_t, window_tok, window_flops, window_loss, window_n = time.perf_counter(), 0, 0.0, 0.0, 0
    window_steps, window_data, data_total, steps_run = 0, 0.0, 0.0, 0
    t_start, elapsed0, mfu_warned = time.perf_counter(), trainer.elapsed, False
    # max_time_s is per invocation: a resumed run plans its schedule from where it began
    start = trainer.strategy.budget_start = (trainer.step, elapsed0)
    recent: list[float] = []
    rows: dict[str, int] = {}
    if getattr(trainer, "rank", 0) == 0:  # once per job, not once per rank
        bar.write(plan_line(cfg))
        hint = idle_threads_hint(cfg.cpu_threads, getattr(trainer, "cpu_threads", 0), trainer.device)
        if hint:
            bar.write(hint)
    try:
        while trainer.step < limit:
            out = trainer.train_step()
            trainer.elapsed = trainer.agreed_seconds(elapsed0 + time.perf_counter() - t_start)
            window_tok, window_flops = window_tok + out.tokens, window_flops + out.flops
            window_steps, window_data = window_steps + 1, window_data + out.data_s
            data_total, steps_run = data_total + out.data_s, steps_run + 1
            if math.isfinite(out.loss):
                window_loss, window_n = window_loss + out.loss, window_n + 1
                recent = [*recent, out.loss][-TRAIN_LOSS_WINDOW:]
            rows = add_stats(rows, out.rows)
            step = trainer.step
            if step % cfg.log_every == 0 or step == limit:
                dt = max(time.perf_counter() - window_t, 1e-9)
                row = {
                    "kind": "train",
                    "step": step,
                    "loss": out.loss if cfg.log_every == 1 else window_loss / max(window_n, 1),
                    "lr": out.result.lr,
                    "grad_norm": out.result.grad_norm,
                    "loss_scale": out.result.loss_scale,
                    "tokens": trainer.tokens,
                    "tokens_per_s": window_tok / dt,
                    "data_ms": 1e3 * window_data / max(window_steps, 1),  # training thread, per step
                    "planned_steps": planned_steps(step, cfg, trainer.elapsed, start),
                    "seq_len": seq_len_at(step - 1, cfg),
                    "elapsed_s": trainer.elapsed,
                }
                for term in sorted(set(out.terms) - {"lm"}):  # electra disc, spanbert sbo, mlm+nsp nsp
                    row[f"{term}_loss"] = out.terms[term]
                if peak is not None:
                    row["tflops"] = window_flops / dt / 1e12
                    row["mfu"] = row["tflops"] / peak
                    if row["mfu"] > 1.0 and not mfu_warned:
                        warnings.warn(
                            f"MFU {row['mfu']:.0%} > 100%: the peak table entry is wrong", stacklevel=2
                        )
                        mfu_warned = True
                    row["mfu"] = min(row["mfu"], 1.0)
                log.write(row)
                post = {
                    "loss": f"{row['loss']:.3f}",
                    "lr": f"{row['lr']:.2e}",
                    "tok/s": f"{row['tokens_per_s']:.0f}",
                }
                if peak is not None:
                    post["MFU"] = f"{row['mfu']:.1%}"
                bar.set_postfix(post, refresh=False)
                window_t, window_tok, window_flops, window_loss, window_n = (
                    time.perf_counter(),
                    0,
                    0.0,
                    0.0,
                    0,
                )
                window_steps, window_data = 0, 0.0
            if cfg.max_time_s > 0:
                bar.total = planned_steps(step, cfg, trainer.elapsed, start)
            bar.update(1)
            # the budget is per invocation: a resumed run gets max_time_s again (and goes on to max_steps)
            out_of_time = cfg.max_time_s > 0 and trainer.elapsed - elapsed0 >= cfg.max_time_s  # ranks agree
            if cfg.eval_every and step % cfg.eval_every == 0 and step < limit:
                log.write({"kind": "eval", "step": step, **trainer.evaluate()})
            if cfg.save_every and step % cfg.save_every == 0 and not out_of_time:
                trainer.save()
            if out_of_time:
                bar.write(f"max_time_s={cfg.max_time_s} reached at step {step}")
                break
    finally:
        bar.close()
        meter.stop()
        if hasattr(trainer.source, "close"):  # stop the prefetching thread
            trainer.source.close()
    final_eval = trainer.evaluate()
    log.write({"kind": "eval", "step": trainer.step, **final_eval})
    trainer.save()
    final_dir = export_model(trainer.model, trainer.out / "final")
    trainer.tok.save(final_dir)
    log.close()
    watts, source = power_estimate(dev_name, trainer.device.type == "cuda", meter.watts(), cfg)
    summary = {
        "objective": cfg.objective,
        "model": cfg.model,
        "device": dev_name,
        "cpu_threads": trainer.cpu_threads if trainer.device.type == "cpu" else None,
        "steps": trainer.step,
        "tokens": trainer.tokens,
        "final_train_loss": sum(recent) / max(len(recent), 1),
        "train_loss_steps": len(recent),  # the last steps of this invocation with a finite loss
        "rows": rows_summary(rows),
        "eval_data": eval_data_summary(trainer),
        "unigram_entropy": trainer.baseline,
        **final_eval,
        "train_seconds": trainer.elapsed,
        "tokens_per_s": trainer.tokens / max(trainer.elapsed, 1e-9),
        "data_wait_share": data_total / max(trainer.elapsed - elapsed0, 1e-9),
        "price_tag": price_tag(
            trainer.flops, trainer.elapsed, watts, source, cfg.price_per_hour, cfg.grid_gco2_per_kwh
        ),
        "final_model": str(final_dir),
    }
    if cfg.plot:
        summary["loss_curve"] = str(
            plot_loss(
                log.jsonl, trainer.out / "loss_curve.png", trainer.baseline, f"{cfg.model} · {cfg.objective}"
            )
        )
    atomic_write_json(trainer.out / "summary.json", summary)
    return summary


def rows_summary(stats: dict[str, int]) -> dict:
    """How the training rows were built, from the batches the steps consumed (summed row_stats)."""
    rows = max(stats.get("rows", 0), 1)
    separated = stats.get("batches", 0) > 0 and stats.get("separated", 0) == stats["batches"]
    return {
        "rows": stats.get("rows", 0),
        "positions_per_row": stats.get("positions", 0) / rows,
        "documents_per_row": stats["documents"] / rows if "documents" in stats else None,
        "padding_share": 1.0 - stats.get("tokens", 0) / max(stats.get("positions", 0), 1),
        "attention_across_documents": not separated,
        "layout": "sentence_pairs" if stats.get("sentence_pairs", 0) == rows else "packed",
    }


def eval_data_summary(trainer) -> dict:
    """What the eval loss is computed on: held-out documents, or (a shard folder) training ones."""
    cfg = trainer.cfg
    return {
        "held_out": not trainer.data.eval_is_train,
        "documents": trainer.data.eval.num_docs,
        "tokens": trainer.data.eval.num_tokens,
        "positions": cfg.eval_batches * cfg.micro_batch_size * seq_len_at(trainer.step, cfg),
        "eval_fraction": None if trainer.data.eval_is_train else cfg.eval_fraction,
        "rows": cfg.eval_batches * cfg.micro_batch_size,
    }


def _rows_line(r: dict) -> str:
    if r.get("layout") == "sentence_pairs":
        return (
            f"{r['positions_per_row']:.0f} positions, one sentence pair per row ([CLS] A [SEP] B [SEP]; "
            "B follows A in its document in half the pairs and comes from another document in the "
            f"others): {r['padding_share']:.1%} padding"
        )
    docs = (
        ""
        if r["documents_per_row"] is None
        else f"{r['documents_per_row']:.2f} documents per row on average (a document cut at a row's end "
        "goes on in the next row), "
    )
    attention = (
        "attention crosses the documents of a row (the model gets no document boundaries)"
        if r["attention_across_documents"]
        else "attention stays within each document"
    )
    return (
        f"{r['positions_per_row']:.0f} positions, documents packed end to end: {docs}"
        f"{r['padding_share']:.1%} padding; {attention}"
    )


def _eval_lines(s: dict) -> list[str]:
    e = s.get("eval_data")
    if e is None:
        return [f"  eval loss / perplexity   {s['eval_loss']:.4f} / {s['perplexity']:.2f}"]
    scored = (
        f"{e['rows']} rows, {s['eval_tokens']:,} tokens scored" if "eval_tokens" in s else f"{e['rows']} rows"
    )
    if e.get("positions", 0) > 1.5 * e.get("tokens", math.inf):  # the eval rows wrap around
        scored += (
            f"; the rows read each of their {e['tokens']:,} tokens ~{e['positions'] / e['tokens']:.0f} times"
        )
    if e["held_out"]:
        where = f"{e['documents']:,} held-out documents (eval_fraction={e['eval_fraction']:g}; {scored})"
        return [f"  eval loss / perplexity   {s['eval_loss']:.4f} / {s['perplexity']:.2f} on {where}"]
    return [
        f"  eval loss / perplexity   {s['eval_loss']:.4f} / {s['perplexity']:.2f} on TRAINING documents ({scored})",
        "  warning: --data is a shard folder, so no document was held out: this eval loss is measured on "
        "text the model trained on and is not a held-out score (give .txt/.jsonl files to hold out "
        "eval_fraction of the documents, or a `ptft prepare` output folder: it holds documents out)",
    ]


def format_summary(s: dict) -> str:
    """The end-of-run table printed by ``ptft pretrain`` (one line for a run that had finished)."""
    if "finished" in s:
        return (
            f"the run in {s['out']} had already finished (step {s['finished']} of max_steps="
            f"{s['max_steps']}): nothing trained, nothing written; raise max_steps to train further"
        )
    p = s["price_tag"]
    lines = [
        f"run summary ({s['model']}, {s['objective']}, {s['device']}"
        + (f", {s['cpu_threads']} CPU thread(s))" if s.get("cpu_threads") else ")"),
        f"  steps / tokens           {s['steps']} / {s['tokens']:,}",
        *([f"  rows                     {_rows_line(s['rows'])}"] if "rows" in s else []),
        f"  final train loss         {s['final_train_loss']:.4f} nats/token (mean over the last "
        f"{s.get('train_loss_steps', TRAIN_LOSS_WINDOW)} steps of this run)",
        f"  unigram entropy baseline {s['unigram_entropy']:.4f} nats/token (token frequencies of the train data)",
        *_eval_lines(s),
        f"  eval token accuracy      {s['accuracy']:.2%}",
        *(
            [f"  eval NSP accuracy        {s['nsp_accuracy']:.2%} (held-out sentence pairs)"]
            if "nsp_accuracy" in s
            else []
        ),
        f"  throughput               {s['tokens_per_s']:.0f} tokens/s over {s['train_seconds']:.1f} s",
        f"  waiting for data         {s['data_wait_share']:.1%} of the training time (training thread)",
        "price tag",
        f"  total FLOPs              {p['total_flops']:.3e} (6·N·D + 12·L·S·d_attn·D)",
        f"  device-hours             {p['device_hours']:.5f}",
        f"  energy                   {p['energy_kwh']:.5f} kWh at {p['power_watts']:.0f} W ({p['power_source']})",
        f"  cost                     {p['cost']:.4f} at {p['price_per_hour']} per device-hour",
        *(
            [
                f"  CO2e                     {p['co2e_kg'] * 1000:.3f} g at {p['grid_gco2_per_kwh']:g} gCO2e/kWh "
                "(set grid_gco2_per_kwh)"
            ]
            if "co2e_kg" in p
            else []
        ),
        f"  final model              {s['final_model']}",
    ]
    if "loss_curve" in s:
        lines.append(f"  loss curve               {s['loss_curve']}")
    return "\n".join(lines)

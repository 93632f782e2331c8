"""What the user sees: the progress bar, metric rows, periodic eval/checkpoints, and the summary
with the price tag (FLOPs, device-hours, energy, cost) and the loss-curve PNG."""

from __future__ import annotations

import math
import time
import warnings

import torch
from tqdm import tqdm

from ptft_fast.data.atomic import atomic_write_json
from ptft_fast.train.metrics import PowerMeter, plot_loss, power_estimate, price_tag
from ptft_fast.train.objectives import export_model
from ptft_fast.train.schedule import seq_len_at
from ptft_fast.utils.device import device_name, device_peaks

PEAK_KEYS = {"bf16": "bfloat16", "fp16": "float16"}


def _peak_tflops(trainer) -> float | None:
    peaks = device_peaks(trainer.device)
    if peaks is None:
        return None
    key = PEAK_KEYS.get(trainer.cfg.precision)
    if key is None:
        key = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "float32"
    return peaks.get(key)


def run_loop(trainer) -> dict:
    """Train to ``max_steps`` (or ``max_time_s``); returns the summary (also ``summary.json``)."""
    cfg, log = trainer.cfg, trainer.log
    peak = _peak_tflops(trainer)
    dev_name = device_name(trainer.device)
    meter = PowerMeter()
    bar = tqdm(total=cfg.max_steps, initial=trainer.step, disable=not cfg.progress, desc=cfg.objective)
    window_t, window_tok, window_flops, window_loss, window_n = time.perf_counter(), 0, 0.0, 0.0, 0
    t_start, elapsed0, mfu_warned = time.perf_counter(), trainer.elapsed, False
    recent: list[float] = []
    try:
        while trainer.step < cfg.max_steps:
            out = trainer.train_step()
            trainer.elapsed = elapsed0 + time.perf_counter() - t_start
            window_tok, window_flops = window_tok + out.tokens, window_flops + out.flops
            if math.isfinite(out.loss):
                window_loss, window_n = window_loss + out.loss, window_n + 1
                recent = [*recent, out.loss][-20:]
            step = trainer.step
            if step % cfg.log_every == 0 or step == cfg.max_steps:
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
                    "seq_len": seq_len_at(step - 1, cfg),
                    "elapsed_s": trainer.elapsed,
                }
                if cfg.objective == "electra":
                    row["disc_loss"] = out.terms.get("disc")
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
            bar.update(1)
            out_of_time = cfg.max_time_s > 0 and trainer.elapsed >= cfg.max_time_s
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                log.write({"kind": "eval", "step": step, **trainer.evaluate()})
            if cfg.save_every and step % cfg.save_every == 0 and not out_of_time:
                trainer.save()
            if out_of_time:
                bar.write(f"max_time_s={cfg.max_time_s} reached at step {step}")
                break
    finally:
        bar.close()
        meter.stop()
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
        "unigram_entropy": trainer.baseline,
        **final_eval,
        "train_seconds": trainer.elapsed,
        "tokens_per_s": trainer.tokens / max(trainer.elapsed, 1e-9),
        "price_tag": price_tag(trainer.flops, trainer.elapsed, watts, source, cfg.price_per_hour),
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


def format_summary(s: dict) -> str:
    """The end-of-run table printed by ``ptft pretrain``."""
    p = s["price_tag"]
    lines = [
        f"run summary ({s['model']}, {s['objective']}, {s['device']}"
        + (f", {s['cpu_threads']} CPU thread(s))" if s.get("cpu_threads") else ")"),
        f"  steps / tokens           {s['steps']} / {s['tokens']:,}",
        f"  final train loss         {s['final_train_loss']:.4f} nats/token (mean of the last 20 steps)",
        f"  unigram entropy baseline {s['unigram_entropy']:.4f} nats/token (token frequencies of the train data)",
        f"  eval loss / perplexity   {s['eval_loss']:.4f} / {s['perplexity']:.2f}",
        f"  eval token accuracy      {s['accuracy']:.2%}",
        f"  throughput               {s['tokens_per_s']:.0f} tokens/s over {s['train_seconds']:.1f} s",
        "price tag",
        f"  total FLOPs              {p['total_flops']:.3e} (6·N·D + 12·L·S·d_attn·D)",
        f"  device-hours             {p['device_hours']:.5f}",
        f"  energy                   {p['energy_kwh']:.5f} kWh at {p['power_watts']:.0f} W ({p['power_source']})",
        f"  cost                     {p['cost']:.4f} at {p['price_per_hour']} per device-hour",
        f"  final model              {s['final_model']}",
    ]
    if "loss_curve" in s:
        lines.append(f"  loss curve               {s['loss_curve']}")
    return "\n".join(lines)

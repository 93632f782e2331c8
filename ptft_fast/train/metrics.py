"""Throughput, FLOPs, MFU, power and the price tag; JSONL + CSV metric logs; the loss-curve PNG.

FLOPs of a training step (forward + backward = 3 × forward, PaLM appendix B):
``6 · N · D + 12 · L · S · d_attn · D`` where N counts the matmul weights a token passes
(per layer 4·C·d_attn for attention projections, 2·C·F (3·C·F gated) for the MLP, 4·C·d_attn more
for cross-attention in decoder layers of encoder-decoder models), D the real (non-padding)
tokens, S the sequence length they attend over, L the layers; the vocab projection (C·V, plus the
MLM transform C²) counts only for the tokens that are scored. Embedding lookups count nothing.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from ptft_fast.models.config import ModelConfig

# Rated board power (W) by device-name substring, used when the device reports none.
RATED_WATTS = {"H200": 700.0, "H100 PCIe": 350.0, "H100": 700.0, "A100": 400.0, "L40S": 350.0, "A10G": 300.0}


def train_flops(cfg: ModelConfig, counts: dict[str, int]) -> float:
    """Training FLOPs of one micro-batch from :func:`ptft_fast.train.objectives.token_counts`."""
    c, a, f = cfg.hidden_size, cfg.attn_dim, cfg.ffn_size
    layer = 4 * c * a + (3 if cfg.gated_ffn else 2) * c * f
    head = c * cfg.vocab_size + (c * c if cfg.arch in ("bert", "roberta") else 0)
    fwd = (
        2 * counts["enc"] * cfg.num_layers * layer
        + 4 * cfg.num_layers * counts["enc"] * counts["enc_len"] * a
    )
    if cfg.is_encoder_decoder:
        ld = cfg.decoder_layers
        fwd += 2 * counts["dec"] * ld * (layer + 4 * c * a)
        fwd += 4 * ld * counts["dec"] * (counts["dec_len"] + counts["enc_len"]) * a
    fwd += 2 * counts["head"] * head
    return 3.0 * fwd


class PowerMeter:
    """Average board power of GPU 0 sampled with nvidia-smi every ``period`` s in a thread.

    ``watts()`` is the measured mean, or None when nothing could be read (no GPU, no nvidia-smi).
    """

    def __init__(self, period: float = 2.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = None
        if torch.cuda.is_available() and shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
            self._thread.start()

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
                self.samples.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self._stop.wait(period)

    def stop(self) -> None:
        self._stop.set()

    def watts(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def power_estimate(device_name: str, is_gpu: bool, measured: float | None, cfg) -> tuple[float, str]:
    """(watts, how it was obtained): override > measured > rated table > configured CPU TDP."""
    if cfg.device_watts > 0:
        return cfg.device_watts, "configured (device_watts)"
    if is_gpu:
        if measured is not None:
            return measured, "measured (nvidia-smi power.draw, mean)"
        for key, watts in RATED_WATTS.items():
            if key in device_name:
                return watts, f"rated board power of {key}"
        return 300.0, "unknown GPU: 300 W assumed (set device_watts)"
    return cfg.cpu_watts, "configured CPU power (cpu_watts)"


def price_tag(
    total_flops: float,
    seconds: float,
    watts: float,
    watts_source: str,
    price_per_hour: float,
    grid_gco2_per_kwh: float = 480.0,
) -> dict:
    """FLOPs, device-hours, energy, cost and CO2e (energy × grid carbon intensity)."""
    hours = seconds / 3600.0
    return {
        "total_flops": total_flops,
        "device_hours": hours,
        "power_watts": watts,
        "power_source": watts_source,
        "energy_kwh": watts * hours / 1000.0,
        "price_per_hour": price_per_hour,
        "cost": hours * price_per_hour,
        "grid_gco2_per_kwh": grid_gco2_per_kwh,
        "co2e_kg": watts * hours / 1000.0 * grid_gco2_per_kwh / 1000.0,
    }


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` and ``metrics.csv`` (CSV columns fixed by ``COLUMNS``)."""

    COLUMNS = (
        "kind", "step", "loss", "lr", "grad_norm", "loss_scale", "tokens", "tokens_per_s",
        "tflops", "mfu", "seq_len", "elapsed_s", "data_ms", "planned_steps", "eval_loss", "perplexity", "accuracy",
    )  # fmt: skip

    def __init__(
        self,
        out: Path,
        keep_until: int | None = None,
        *,
        columns: tuple[str, ...] | None = None,
        report_to: str = "none",
        run_name: str = "",
    ) -> None:
        """A fresh log, or (resuming, ``keep_until`` = the checkpoint's step) the old rows up to
        that step: rows a killed run wrote after its last checkpoint are dropped. ``report_to``:
        every new row also goes to TensorBoard / W&B / MLflow (:mod:`ptft_fast.train.report`)."""
        from ptft_fast.train.report import open_reporter

        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        old = read_rows(self.jsonl) if keep_until is not None and self.jsonl.is_file() else []
        self.reporter = open_reporter(report_to, out, run_name=run_name, resume_step=keep_until)
        self._j = self.jsonl.open("w")
        self._c = self.csv.open("w", newline="")
        self._w = csv.DictWriter(self._c, fieldnames=columns or self.COLUMNS, extrasaction="ignore")
        self._w.writeheader()
        for row in old:
            if row["step"] <= keep_until:
                self._write_files(row)  # already reported by the run that wrote them

    def _write_files(self, row: dict) -> None:
        self._j.write(json.dumps(row) + "\n")
        self._j.flush()
        self._w.writerow(row)
        self._c.flush()

    def write(self, row: dict) -> None:
        self._write_files(row)
        self.reporter.write(row)

    def close(self) -> None:
        self._j.close()
        self._c.close()
        self.reporter.close()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(jsonl: Path, png: Path, baseline: float | None, title: str) -> Path:
    """Train (and eval) loss against step, with the unigram-entropy baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(jsonl)
    train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", label=f"unigram entropy {baseline:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png

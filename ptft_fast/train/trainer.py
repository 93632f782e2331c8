"""The pre-training loop: accumulation with per-token normalization, NaN policy, eval, logging,
checkpoints and the end-of-run summary. Numerics of the update live in the strategy object.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ptft_fast.data.prefetch import PrefetchingSource
from ptft_fast.train import checkpoint as ckpt
from ptft_fast.train.build import model_config, tokenizer_kind
from ptft_fast.train.compiled import GraphStep, compile_model
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import BatchSource, prepare_run_data, unigram_entropy
from ptft_fast.train.metrics import MetricsLog, train_flops
from ptft_fast.train.objectives import (
    add_stats,
    build_for_objective,
    eval_sums,
    label_counts,
    loss_sums,
    row_stats,
    token_counts,
)
from ptft_fast.train.schedule import seq_len_at
from ptft_fast.train.strategy import StepResult, Strategy, TorchStrategy, check_step
from ptft_fast.train.strategy import TrainingDiverged as TrainingDiverged  # re-exported: the loop's error


@dataclass
class StepOutput:
    loss: float  # mean over the step's labeled tokens (the LM / MLM term)
    terms: dict[str, float]  # mean per loss term
    result: StepResult
    tokens: int
    flops: float
    rows: dict[str, int] = dataclasses.field(default_factory=dict)  # summed row_stats of the batches
    data_s: float = 0.0  # time the training thread spent getting the step's batches onto the device


def accumulate_step(
    objective: str,
    model: nn.Module,
    strategy: Strategy,
    batches: list[dict],
    step: int,
    weights: dict[str, float],
    sample_gen: torch.Generator | None = None,
    elapsed_s: float = 0.0,
) -> StepOutput:
    """One optimizer step over ``batches`` (the micro-batches): each term's summed loss is divided
    by that term's labeled-token count over *all* micro-batches, so the gradient is the per-token
    mean of the whole accumulated batch."""
    counts = [label_counts(objective, b) for b in batches]
    totals = {t: sum(c[t] for c in counts) for t in counts[0]}
    sums = dict.fromkeys(totals, 0.0)
    tokens, flops, rows = 0, 0.0, {}
    cfg = model.config
    for b in batches:
        rows = add_stats(rows, row_stats(b))
        with strategy.autocast():
            parts = loss_sums(objective, model, b, sample_gen)
        if parts:
            strategy.backward(sum(weights[t] * s / totals[t] for t, s in parts.items()))
        for t, s in parts.items():
            sums[t] += float(s.detach())
        tc = token_counts(objective, b)
        tokens += tc["enc"] + tc["dec"]
        flops += train_flops(cfg, tc) * (2 if objective == "electra" else 1)
    result = strategy.step(step, elapsed_s)
    terms = {t: sums[t] / totals[t] if totals[t] else float("nan") for t in totals}
    return StepOutput(terms["lm"], terms, result, tokens, flops, rows)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MASKS = ("attention_mask", "decoder_attention_mask")


def drop_full_masks(objective: str, batch: dict) -> dict:
    """``batch`` without the attention masks that mask nothing, read on the host before the batch
    goes to the device (free there): models then take attention's unmasked (or is_causal) path
    on GPU and in graph mode too, where they cannot look at the mask. ELECTRA keeps its mask (its
    sampler reads it)."""
    if objective == "electra":
        return batch
    return {k: v for k, v in batch.items() if not (k in MASKS and bool(v.all()))}


SMALL_MODEL = 20_000_000  # parameters; below this one CPU thread is fastest
DEFAULT_THREADS = torch.get_num_threads()  # torch's choice at import, before any run changed it


def set_cpu_threads(requested: int, model: nn.Module, device: torch.device) -> int:
    """Intra-op threads for CPU training. Auto (0): one thread for small models — their ops are too
    small to split, and on a shared 2-core machine (load 5-9) 2 threads measured 6-20× slower per
    step than 1 for bert-tiny-cpu and bert-tiny (OpenMP barriers wait for descheduled threads;
    ``benchmarks/threads_cpu.py``, README) — else torch's default."""
    if device.type != "cpu":
        return torch.get_num_threads()
    if requested == 0:  # auto: the same choice whatever an earlier run in this process set
        requested = 1 if sum(p.numel() for p in model.parameters()) < SMALL_MODEL else DEFAULT_THREADS
    if requested:
        torch.set_num_threads(requested)
    return torch.get_num_threads()


IDLE_LOAD = 0.5  # 1-minute load average per core below which the machine counts as idle


def idle_threads_hint(requested: int, threads: int, device: torch.device) -> str | None:
    """A hint when auto picked one thread on a CPU that looks idle now (no other work): two threads
    measured 1.33x the tokens/s of one for bert-tiny on the idle 2-core machine (README), but 6-20x
    slower under load, so auto does not switch by itself (the load can change mid-run)."""
    cores = os.cpu_count() or 1
    if device.type != "cpu" or requested != 0 or threads != 1 or cores < 2:
        return None
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    if load >= IDLE_LOAD * cores:
        return None
    return (
        f"1 CPU thread (auto: a model under {SMALL_MODEL // 1_000_000} M parameters); this machine looks "
        f"idle now (load {load:.1f} on {cores} cores): --set cpu_threads={cores} may train faster while "
        "it stays idle (bert-tiny on an idle 2-core CPU: 1.33x tokens/s; under load: 6-20x slower)"
    )


def batch_source(cfg: TrainConfig, shards, tok, device: torch.device):
    """The run's training batches: a :class:`BatchSource`, built ahead on a background thread
    unless ``cfg.prefetch`` is 0 (pinned for non-blocking copies on CUDA)."""
    source = BatchSource(cfg.objective, shards, tok, cfg, seed=cfg.seed)
    if not cfg.prefetch:
        return source
    return PrefetchingSource(source, cfg.prefetch, pin_memory=device.type == "cuda")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a batch; non-blocking from pinned memory (the copy overlaps the previous step)."""
    return {k: v.to(device, non_blocking=v.is_pinned()) for k, v in batch.items()}


class Trainer:
    """Builds data, model and strategy from a TrainConfig (resuming when asked) and runs."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None) -> None:
        cfg.validate()
        self.cfg, self.out = cfg, Path(cfg.out)
        resume_path, saved = None, None
        if resume:  # verified (or fallen back) before anything is built or written
            resume_path = ckpt.resolve(resume, self.out)
            saved = ckpt.read_trainer_state(resume_path)
        self.step = saved["step"] if saved else 0
        self.finished = saved is not None and ckpt.run_finished(self.out, saved["step"], cfg.step_limit)
        if self.finished:
            return  # nothing to do and nothing to write: run() says so
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        seed_everything(cfg.seed)
        self.data = prepare_run_data(cfg, tokenizer_kind(cfg), self.out, resuming=resume is not None)
        self.tok = self.data.tokenizer
        self.model_config = model_config(cfg, self.tok)
        if saved is not None:
            diff = ckpt.config_diff(saved["model_config"], dataclasses.asdict(self.model_config))
            if diff:
                raise ckpt.ResumeError(
                    f"cannot resume {resume_path}: the model config changed in key(s) "
                    f"{[d.split(':')[0] for d in diff]} ({'; '.join(diff)})"
                )
        self.model = build_for_objective(cfg.objective, self.model_config, cfg.electra_generator_size)
        self.model = self.model.to(self.device)
        self.cpu_threads = set_cpu_threads(cfg.cpu_threads, self.model, self.device)
        self.strategy = TorchStrategy(self.model, cfg, self.device)
        if cfg.compile:
            compile_model(self.model, cfg)
        self.graph_step = GraphStep.for_trainer(self) if cfg.cuda_graphs else None
        self.source = batch_source(cfg, self.data.train, self.tok, self.device)
        self.sample_gen = torch.Generator().manual_seed(cfg.seed) if cfg.objective == "electra" else None
        self.weights = {"lm": 1.0, "disc": cfg.electra_disc_weight, "sbo": 1.0, "nsp": 1.0}
        self.step, self.tokens, self.flops, self.elapsed, self.bad = 0, 0, 0.0, 0.0, 0
        if resume_path is not None:
            state = ckpt.load_checkpoint(resume_path, self.model, self.strategy)
            self._restore(state)
            changed = sorted(k for k, v in saved["config"].items() if cfg.to_dict().get(k) != v)
            if changed:
                warnings.warn(f"resuming with changed run settings {changed}", stacklevel=2)
        self.log = MetricsLog(
            self.out,
            keep_until=self.step if resume_path else None,
            report_to=cfg.report_to,
            run_name=self.out.name,
        )
        self.baseline = unigram_entropy(self.data.train, self.tok.vocab_size)

    # ------------------------------------------------------------ state
    def _state(self) -> dict:
        gen = None
        if self.sample_gen is not None:
            gen = base64.b64encode(self.sample_gen.get_state().numpy().tobytes()).decode()
        return {
            "data": self.source.state_dict(),
            "sample_gen": gen,
            "config": self.cfg.to_dict(),
            "model_config": dataclasses.asdict(self.model_config),
            "tokens": self.tokens,
            "flops": self.flops,
            "elapsed_s": self.elapsed,
            "bad_steps": self.bad,
        }

    def _restore(self, state: dict) -> None:
        self.source.load_state_dict(state["data"])
        if self.sample_gen is not None and state.get("sample_gen"):
            raw = np.frombuffer(base64.b64decode(state["sample_gen"]), dtype=np.uint8).copy()
            self.sample_gen.set_state(torch.from_numpy(raw))
        self.step, self.tokens, self.flops = state["step"], state["tokens"], state["flops"]
        self.elapsed, self.bad = state["elapsed_s"], state["bad_steps"]

    def save(self) -> Path:
        return ckpt.save_checkpoint(
            self.out / "checkpoints",
            self.step,
            self.model,
            self.strategy.state_dict(),
            self._state(),
            self.cfg.keep_last,
        )

    # ------------------------------------------------------------ one step, eval
    def train_step(self) -> StepOutput:
        """Collate the step's micro-batches, accumulate, update; apply the NaN/inf policy."""
        cfg = self.cfg
        seq_len = seq_len_at(self.step, cfg)
        t0 = time.perf_counter()
        host = [
            drop_full_masks(cfg.objective, self.source.next(cfg.micro_batch_size, seq_len))
            for _ in range(cfg.grad_accum_steps)
        ]
        self.model.train()
        if self.graph_step is not None:  # copies the batches into its captured inputs itself
            data_s = time.perf_counter() - t0
            out = self.graph_step(host, self.step, self.elapsed)
        else:
            batches = [to_device(b, self.device) for b in host]
            data_s = time.perf_counter() - t0
            out = accumulate_step(
                cfg.objective,
                self.model,
                self.strategy,
                batches,
                self.step,
                self.weights,
                self.sample_gen,
                self.elapsed,
            )
        out.data_s = data_s
        self.bad = check_step(
            self.bad, self.step, out.terms.values(), out.result, cfg, self.out / "checkpoints"
        )
        self.step += 1
        self.tokens += out.tokens
        self.flops += out.flops
        return out

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss, perplexity and token accuracy (MLM accuracy for mlm/electra) on held-out batches;
        the same batches every time, and no training RNG is consumed."""
        cfg = self.cfg
        src = BatchSource(cfg.objective, self.data.eval, self.tok, cfg, seed=cfg.seed + 1_000_003)
        totals: dict[str, float] = {"loss_sum": 0.0, "tokens": 0, "correct": 0}
        self.model.eval()
        with torch.random.fork_rng(devices=[]), self.strategy.autocast():
            for _ in range(cfg.eval_batches):
                b = {
                    k: v.to(self.device)
                    for k, v in src.next(cfg.micro_batch_size, seq_len_at(self.step, cfg)).items()
                }
                for k, v in eval_sums(cfg.objective, self.model, b).items():
                    totals[k] = totals.get(k, 0) + v
        self.model.train()
        n = max(totals["tokens"], 1)
        loss = totals["loss_sum"] / n
        result = {
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "accuracy": totals["correct"] / n,
            "eval_tokens": totals["tokens"],  # the tokens scored (MLM: the masked ones)
        }
        if "nsp_pairs" in totals:  # mlm+nsp: next-sentence accuracy on the held-out pairs
            result["nsp_accuracy"] = totals["nsp_correct"] / max(totals["nsp_pairs"], 1)
        return result

    def agreed_seconds(self, seconds: float) -> float:
        """The elapsed training time the run acts on (schedule, time budget): one process's own."""
        return seconds

    def run(self) -> dict:
        """Train and return the summary; for a run resumed after it finished, ``{"finished": step}``
        (nothing trained, nothing written)."""
        from ptft_fast.train.loop import run_loop

        if getattr(self, "finished", False):
            return {"finished": self.step, "max_steps": self.cfg.step_limit, "out": str(self.out)}
        return run_loop(self)

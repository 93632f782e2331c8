"""The trainer on a DeepSpeed engine: data parallel over ranks, ZeRO checkpoints with our client state.

Data: every rank draws the *global* micro-batch (micro × world rows) from the same seeded
source and keeps its own slice, so the data cursor is the same on all ranks (saved once) and
2 ranks × micro-batch b see exactly the rows of one process with batch 2b. Loss terms are
divided by their labeled-token count over the global batch (known on every rank without
communication), which makes the update equal to single-process training on that batch.

Checkpoints: ``OUT/checkpoints/step_XXXXXXXX/`` written by ``engine.save_checkpoint`` (model and
ZeRO optimizer shards per rank) with the client state (data cursor, step, counters) and a
per-rank RNG file beside them; ``latest`` is replaced atomically by rank 0 after every rank has
written, so a kill mid-save leaves it naming a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ptft_fast.train import checkpoint as ckpt
from ptft_fast.train.build import model_config, tokenizer_kind
from ptft_fast.train.config import TrainConfig, TrainConfigError
from ptft_fast.train.data import prepare_run_data, unigram_entropy
from ptft_fast.train.deepspeed_config import DeepSpeedOptions, build_config
from ptft_fast.train.deepspeed_strategy import DeepSpeedStrategy, init_distributed
from ptft_fast.train.metrics import MetricsLog, train_flops
from ptft_fast.train.objectives import (
    add_stats,
    build_for_objective,
    label_counts,
    loss_sums,
    model_inputs,
    row_stats,
    token_counts,
)
from ptft_fast.train.schedule import seq_len_at
from ptft_fast.train.trainer import StepOutput, Trainer, batch_source, seed_everything, set_cpu_threads
from ptft_fast.train.zero_utils import GatheredStateDict
from ptft_fast.utils.atomic import atomic_open, fix_mode


class _NoLog:
    """Ranks other than 0 write no metrics."""

    jsonl = None

    def write(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _slice(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


class DeepSpeedTrainer(Trainer):
    """:class:`Trainer` with a :class:`DeepSpeedStrategy`; run it on every rank of the launch.

    ``run()`` is the Trainer's loop (``train.loop.run_loop``): same logging, eval, checkpoint
    cadence, final export and summary; ranks other than 0 neither log, plot nor show progress.
    """

    def __init__(self, cfg: TrainConfig, ds: DeepSpeedOptions, resume: str | None = None) -> None:
        cfg.validate()
        if cfg.compile or cfg.cuda_graphs:
            raise TrainConfigError("compile and cuda_graphs are single-process options; not with DeepSpeed")
        self.rank, self.world = init_distributed()
        if self.rank != 0:  # rank 0 shows progress, logs metrics and plots
            cfg = dataclasses.replace(cfg, progress=False, plot=False)
        self.cfg, self.out = cfg, Path(cfg.out)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.rank == 0:  # tokenizer + shards are cached in the run folder: build them once
            self.out.mkdir(parents=True, exist_ok=True)
            prepare_run_data(cfg, tokenizer_kind(cfg), self.out, resuming=resume is not None)
        dist.barrier()
        seed_everything(cfg.seed)
        self.data = prepare_run_data(cfg, tokenizer_kind(cfg), self.out, resuming=resume is not None)
        self.tok = self.data.tokenizer
        self.model_config = model_config(cfg, self.tok)
        model = build_for_objective(cfg.objective, self.model_config, cfg.electra_generator_size).to(
            self.device
        )
        self.cpu_threads = set_cpu_threads(cfg.cpu_threads, model, self.device)  # the Trainer's policy
        self.ds_config = build_config(ds, cfg, self.world)
        self.strategy = DeepSpeedStrategy(model, cfg, self.ds_config)
        self.engine = self.strategy.engine
        self.model = self.engine.module
        # ZeRO-3: state_dict() gathers full tensors (for the final export), except in engine checkpoints
        self._gather = GatheredStateDict(self.model) if self.strategy.stage == 3 else None
        self.source = batch_source(cfg, self.data.train, self.tok, self.device)
        self.sample_gen = torch.Generator().manual_seed(cfg.seed) if cfg.objective == "electra" else None
        self.weights = {"lm": 1.0, "disc": cfg.electra_disc_weight}
        self.step, self.tokens, self.flops, self.elapsed, self.bad = 0, 0, 0.0, 0.0, 0
        if resume is not None:
            self.load(resume)
        self.finished = resume is not None and ckpt.run_finished(self.out, self.step, cfg.step_limit)
        finished_or_other_rank = self.finished or self.rank != 0  # a finished run writes nothing
        self.log = (
            _NoLog()
            if finished_or_other_rank
            else MetricsLog(
                self.out,
                keep_until=self.step if resume else None,
                report_to=cfg.report_to,
                run_name=self.out.name,
            )
        )
        self.baseline = unigram_entropy(self.data.train, self.tok.vocab_size)

    # ------------------------------------------------------------ one step
    def train_step(self) -> StepOutput:
        """Global micro-batches → this rank's slices → engine backward (global token normalization)."""
        cfg, micro = self.cfg, self.cfg.micro_batch_size
        seq_len = seq_len_at(self.step, cfg)
        t0 = time.perf_counter()
        full = [self.source.next(micro * self.world, seq_len) for _ in range(cfg.grad_accum_steps)]
        data_s = time.perf_counter() - t0
        counts = [label_counts(cfg.objective, b) for b in full]
        totals = {t: sum(c[t] for c in counts) for t in counts[0]}
        sums = torch.zeros(len(totals), dtype=torch.float64)
        tokens, flops = 0, 0.0
        self.engine.train()
        for b in full:
            local = {
                k: v.to(self.device) for k, v in _slice(b, self.rank * micro, (self.rank + 1) * micro).items()
            }
            parts = loss_sums(cfg.objective, self.engine, local, self.sample_gen)
            if parts:
                loss = sum(self.weights[t] * s / totals[t] for t, s in parts.items())
            else:  # no labeled token in this slice: a zero loss still runs the engine's reduction
                loss = self.engine(**model_inputs(local)).loss.float() * 0.0
            self.strategy.backward(loss)
            for i, t in enumerate(totals):
                sums[i] += float(parts[t].detach()) if t in parts else 0.0
            tc = token_counts(cfg.objective, b)  # the global batch: what the whole job processed
            tokens += tc["enc"] + tc["dec"]
            flops += train_flops(self.model_config, tc) * (2 if cfg.objective == "electra" else 1)
        result = self.strategy.step(self.step, self.elapsed)
        dist.all_reduce(sums)
        terms = {t: float(sums[i]) / totals[t] if totals[t] else float("nan") for i, t in enumerate(totals)}
        self.step += 1
        self.tokens += tokens
        self.flops += flops
        rows: dict = {}
        for b in full:  # the global batch: what the whole job trained on
            rows = add_stats(rows, row_stats(b))
        return StepOutput(terms["lm"], terms, result, tokens, flops, rows, data_s)

    def agreed_seconds(self, seconds: float) -> float:
        """With a time budget, every rank acts on the slowest rank's elapsed time (one all-reduce a
        step): each rank's own clock would plan a different learning rate and stop at a different
        step, leaving the others waiting in a collective for ever."""
        if self.world == 1 or self.cfg.max_time_s <= 0:
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    # ------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """``engine.save_checkpoint`` on every rank + per-rank RNG; rank 0 then moves ``latest``."""
        client = dict(self._state(), step=self.step)
        with self._gather.paused() if self._gather else contextlib.nullcontext():
            return save_engine_checkpoint(
                self.engine, self.out / "checkpoints", self.step, client, self.rank, self.cfg.keep_last
            )

    def load(self, resume: str) -> None:
        """Restore engine (weights, ZeRO optimizer shards, loss scaler), client state and RNG."""
        path = ckpt.resolve(resume, self.out)
        state = load_engine_checkpoint(self.engine, path, self.rank)
        diff = ckpt.config_diff(state["model_config"], dataclasses.asdict(self.model_config))
        if diff:
            raise ckpt.ResumeError(f"cannot resume {path}: the model config changed ({'; '.join(diff)})")
        self._restore(state)


def save_engine_checkpoint(
    engine, ckpt_dir: Path, step: int, client: dict, rank: int, keep_last: int
) -> Path:
    """Checkpoint ``step_XXXXXXXX`` of a DeepSpeed run (call on every rank): the engine's files
    (weights, ZeRO optimizer shards, loss scaler) with ``client`` state and each rank's RNG; rank 0
    writes the manifest and moves ``latest`` once every rank has written, then prunes."""
    tag = f"step_{step:08d}"
    if ckpt.read_latest(ckpt_dir) == tag and ckpt.verify(ckpt_dir / tag) is None:
        return ckpt_dir / tag  # already the newest checkpoint (the loop saves again at the end)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"ptft": client}, save_latest=False)
    rng_js, rng_tensors = ckpt.rng_state()
    save_file(rng_tensors, ckpt_dir / tag / f"rng_rank{rank}.safetensors")
    fix_mode(ckpt_dir / tag / f"rng_rank{rank}.safetensors")  # safetensors creates 0600 files
    (ckpt_dir / tag / f"rng_rank{rank}.json").write_text(json.dumps(rng_js))
    dist.barrier()  # every rank's files are written before latest names the checkpoint
    if rank == 0:
        ckpt.write_manifest(ckpt_dir / tag)
        with atomic_open(ckpt_dir / ckpt.LATEST) as fh:
            fh.write(tag + "\n")
        done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and p.name != tag)
        for old in done[: max(len(done) - (keep_last - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return ckpt_dir / tag


def load_engine_checkpoint(engine, path: Path, rank: int) -> dict:
    """Restore the engine and this rank's RNG from checkpoint ``path``; returns the client state."""
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    rng_file = path / f"rng_rank{rank}.safetensors"
    if not rng_file.is_file():
        raise ckpt.ResumeError(f"cannot resume {path}: no RNG state for rank {rank} (world size changed?)")
    ckpt.set_rng_state(json.loads((path / f"rng_rank{rank}.json").read_text()), load_file(rng_file))
    return client["ptft"]

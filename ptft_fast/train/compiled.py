"""Compiled and graph-captured training steps: ``ptft pretrain --compile`` / ``--cuda-graphs``.

``--compile``: ``torch.compile(fullgraph=True)`` of the modules the objective calls, in place
(parameters, state dict, checkpoints and export unchanged). The ops stay opaque: the triton and
cuda backends are ``torch.library`` custom ops whose fake implementations give the shapes, the
torch backend traces into plain aten ops; models take their graph-mode paths
(``ptft_fast.ops.graph_mode``), so there is no graph break to fall back on.

``--cuda-graphs``: :class:`GraphStep` runs a whole optimizer step — forward and backward of every
micro-batch, gradient clipping, the non-finite check and AdamW — as device work only, captured
into one CUDA graph and replayed each step. The host copies the batch into the captured input
buffers, sets the learning rate and each micro-batch's share of the loss, replays, and reads the
loss and gradient norm once. CPU tests run the same step body eagerly (``capture=False``): what is
not verified without a GPU is the capture and replay themselves.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ptft_fast.ops import dispatch
from ptft_fast.ops.graph_mode import static_shapes
from ptft_fast.train.config import TrainConfig, TrainConfigError
from ptft_fast.train.metrics import train_flops
from ptft_fast.train.objectives import add_stats, label_counts, model_inputs, row_stats, token_counts
from ptft_fast.train.strategy import StepResult, build_adamw

WARMUP_REPLAYS = 3  # eager runs on a side stream before capture: allocator, cuBLAS, autotuning


def compile_model(model: nn.Module, cfg: TrainConfig) -> None:
    """``torch.compile`` the modules ``cfg.objective`` calls, in place, with no graph break allowed."""
    targets = {
        "electra": lambda: [model.generator, model.discriminator.encoder],
        "spanbert": lambda: [model.mlm.encoder],
    }.get(cfg.objective, lambda: [model])()
    for module in targets:
        module.compile(fullgraph=True, backend=cfg.compile_backend)


def _fmt(shape_dtype: tuple | None) -> str:
    return (
        "missing" if shape_dtype is None else f"{shape_dtype[0]} {str(shape_dtype[1]).removeprefix('torch.')}"
    )


class GraphShapeError(TrainConfigError):
    """A step's batch differs in shape from the captured one (cuda_graphs needs fixed shapes)."""


def _triton_dropout(model: nn.Module) -> bool:
    """Whether the model drops out inside a triton kernel: its Philox seed is drawn on the host,
    so a captured graph would replay one mask."""
    cfg = model.config
    if not (cfg.dropout or cfg.attention_dropout):
        return False
    return any(_backend_name(op) == "triton" for op in ("attention", "layer_norm"))


def _backend_name(op: str) -> str:
    impl = dispatch._lookup(op, None, "cuda")
    return next(name for name, fn in dispatch._REGISTRY[op].items() if fn is impl)


class GraphStep:
    """One optimizer step as device work only, captured once and replayed (see the module doc).

    Clipping and the non-finite check run on the device: a non-finite step leaves the weights as
    they were (gradients zeroed, learning rate 0), but, unlike the eager loop, AdamW's moments
    still decay by one step. A step with a micro-batch that has no labeled token runs eagerly
    (its loss would be 0/0 in the graph). Called with the step's batches on the host.
    """

    def __init__(
        self, objective: str, model: nn.Module, strategy, cfg: TrainConfig, device, *, capture: bool
    ):
        self.objective, self.model, self.strategy, self.cfg, self.device = (
            objective,
            model,
            strategy,
            cfg,
            device,
        )
        self.capture = capture
        self.lr = torch.tensor(cfg.lr, device=device)  # what AdamW reads; set inside the step
        self.lr_next = torch.zeros((), device=device)  # this step's scheduled rate, set on the host
        strategy.optimizer = build_adamw(model, cfg, device, lr=self.lr)
        self.params = [p for g in strategy.optimizer.param_groups for p in g["params"]]
        self.shares = [torch.zeros((), device=device) for _ in range(cfg.grad_accum_steps)]
        self.graph = None
        self.inputs: list[dict[str, torch.Tensor]] = []
        self.outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def for_trainer(cls, trainer) -> GraphStep:
        """The Trainer's GraphStep; refuses clearly where a captured step cannot run."""
        if trainer.device.type != "cuda":
            raise TrainConfigError("cuda_graphs needs a CUDA GPU; none is visible here")
        if _triton_dropout(trainer.model):
            raise TrainConfigError(
                "cuda_graphs with the triton backend needs dropout 0 (its kernels' dropout seed is drawn "
                "on the host and a graph would replay one mask); set dropout and attention_dropout to 0 "
                "or use backend cuda/torch"
            )
        return cls(
            trainer.cfg.objective, trainer.model, trainer.strategy, trainer.cfg, trainer.device, capture=True
        )

    # ------------------------------------------------------------------ the captured body
    def _body(self, batches: list[dict[str, torch.Tensor]]):
        """Forward + backward of each micro-batch (loss × its share), clip, guard, AdamW step.
        Returns the step's loss, gradient norm and finiteness, all device scalars."""
        total = None
        for batch, share in zip(batches, self.shares, strict=False):
            with self.strategy.autocast():
                loss = self.model(**batch).loss
            part = loss.to(torch.promote_types(loss.dtype, torch.float32)) * share
            part.backward()
            total = part.detach() if total is None else total + part.detach()
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        finite = torch.isfinite(norm)
        coef = torch.ones((), device=self.device)
        if self.cfg.max_grad_norm:
            coef = torch.where(norm > self.cfg.max_grad_norm, self.cfg.max_grad_norm / (norm + 1e-6), coef)
        coef = torch.where(finite, coef, 0.0)
        for g in grads:  # where, not a product: a NaN gradient times 0 stays NaN
            g.copy_(torch.where(finite, g * coef.to(g.dtype), 0.0))
        self.lr.copy_(torch.where(finite, self.lr_next, 0.0))
        self.strategy.optimizer.step()
        return total, norm, finite

    def _capture(self, batches: list[dict[str, torch.Tensor]]) -> None:
        """Warm up on a side stream (weights untouched: learning rate 0, optimizer state restored),
        then capture the body into one graph over static copies of ``batches``."""
        self.inputs = [{k: v.clone() for k, v in b.items()} for b in batches]
        optimizer = self.strategy.optimizer
        before = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        self.lr_next.zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), static_shapes():
            for _ in range(WARMUP_REPLAYS):
                optimizer.zero_grad(set_to_none=True)
                self._body(self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # the state as before the warm-up: loaded, or fresh (all zeros)
            for p, state in optimizer.state.items():
                for k, v in state.items():
                    if not isinstance(v, torch.Tensor):
                        continue
                    if p in before:
                        v.copy_(before[p][k])
                    else:
                        v.zero_()
        optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates them
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), static_shapes():
            self.outputs = self._body(self.inputs)

    # ------------------------------------------------------------------ one step
    def _check_shapes(self, batches: list[dict[str, torch.Tensor]]) -> None:
        for i, (batch, captured) in enumerate(zip(batches, self.inputs, strict=True)):
            got = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
            want = {k: (tuple(v.shape), v.dtype) for k, v in captured.items()}
            if got != want:
                diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                raise GraphShapeError(
                    f"cuda_graphs needs fixed shapes: micro-batch {i} has "
                    + ", ".join(f"{k} {_fmt(got.get(k))} (captured: {_fmt(want.get(k))})" for k in diff)
                )

    def __call__(self, batches: list[dict[str, torch.Tensor]], step: int, elapsed_s: float = 0.0):
        """One optimizer step over host ``batches`` (micro-batches), ``elapsed_s`` seconds into the
        run (time budgets plan the schedule from it); returns the trainer's StepOutput."""
        from ptft_fast.train.trainer import StepOutput, accumulate_step

        counts = [label_counts(self.objective, b)["lm"] for b in batches]
        if min(counts) == 0:
            warnings.warn(f"step {step}: a micro-batch without labeled tokens runs eagerly", stacklevel=2)
            moved = [{k: v.to(self.device) for k, v in b.items()} for b in batches]
            weights = {"lm": 1.0}
            return accumulate_step(
                self.objective, self.model, self.strategy, moved, step, weights, None, elapsed_s
            )
        rows: dict[str, int] = {}
        for b in batches:
            rows = add_stats(rows, row_stats(b))
        batches = [model_inputs(b) for b in batches]  # the statistics keys never reach the model
        if self.capture and self.graph is None:
            self._capture([{k: v.to(self.device) for k, v in b.items()} for b in batches])
        elif self.capture:
            self._check_shapes(batches)
            for static, batch in zip(self.inputs, batches, strict=True):
                for k, v in batch.items():
                    static[k].copy_(v, non_blocking=True)
        lr = self.strategy.lr_at(step, elapsed_s)
        for share, count in zip(self.shares, counts, strict=True):
            share.fill_(count / sum(counts))
        self.lr_next.fill_(lr)
        if self.capture:
            self.graph.replay()
            loss, norm, finite = self.outputs
        else:  # CPU tests: the same body, eagerly
            with static_shapes():
                loss, norm, finite = self._body(
                    [{k: v.to(self.device) for k, v in b.items()} for b in batches]
                )
            self.strategy.optimizer.zero_grad(set_to_none=True)
        stepped, grad_norm = bool(finite), float(norm)
        tokens = [token_counts(self.objective, b) for b in batches]
        flops = sum(train_flops(self.model.config, tc) for tc in tokens)
        result = StepResult(stepped, grad_norm, lr, 1.0)
        value = float(loss)
        return StepOutput(
            value, {"lm": value}, result, sum(tc["enc"] + tc["dec"] for tc in tokens), flops, rows=rows
        )

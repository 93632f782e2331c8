"""``--cuda-graphs`` on CPU: the captured step's body (device-side clipping, non-finite guard,
tensor learning rate, loss shares of the micro-batches) run eagerly against the eager loop, and
every refusal. The capture and replay themselves need a GPU (tests marked gpu)."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.cli import main
from ptft_fast.models import build_model
from ptft_fast.models.config import ModelConfig
from ptft_fast.ops import use_backend
from ptft_fast.train.compiled import GraphShapeError, GraphStep, _triton_dropout
from ptft_fast.train.config import TrainConfig, TrainConfigError
from ptft_fast.train.trainer import Trainer


def _trainer(out, graph: bool, **over) -> Trainer:
    trainer = Trainer(TrainConfig(model="bert-tiny-cpu", objective="mlm", out=str(out), **over))
    if graph:  # what for_trainer builds on CUDA, with the body run eagerly instead of replayed
        trainer.graph_step = GraphStep(
            "mlm", trainer.model, trainer.strategy, trainer.cfg, trainer.device, capture=False
        )
    return trainer


@pytest.mark.parametrize("accum", [1, 2])
def test_graph_step_body_matches_the_eager_step(accum, new_run, tiny):
    # a small max_grad_norm: the device-side clipping is active on every step
    run = dict(tiny, grad_accum_steps=accum, max_grad_norm=0.05, lr=3e-3, warmup_steps=2, max_steps=8)
    eager, graph = _trainer(new_run(name="eager"), False, **run), _trainer(new_run(name="graph"), True, **run)
    for _ in range(5):
        a, b = eager.train_step(), graph.train_step()
        assert abs(a.loss - b.loss) <= 1e-5, (a.loss, b.loss)
        assert b.result.stepped and abs(a.result.grad_norm - b.result.grad_norm) <= 1e-4 * a.result.grad_norm
        assert a.result.lr == b.result.lr and a.tokens == b.tokens and a.flops == b.flops
    for (name, p), q in zip(eager.model.named_parameters(), graph.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    assert isinstance(graph.strategy.optimizer.param_groups[0]["lr"], torch.Tensor)


def test_a_non_finite_step_leaves_the_weights_unchanged(new_run, tiny):
    trainer = _trainer(new_run(), True, **tiny)
    trainer.train_step()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    real_forward = trainer.model.forward

    def poisoned(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        out.loss = out.loss * float("inf")
        return out

    trainer.model.forward = poisoned
    with pytest.warns(UserWarning, match="non-finite"):
        out = trainer.train_step()
    assert not out.result.stepped and trainer.bad == 1
    for p, q in zip(before, trainer.model.parameters(), strict=True):
        assert torch.equal(p, q)
    trainer.model.forward = real_forward
    assert trainer.train_step().result.stepped and trainer.bad == 0
    assert any(not torch.equal(p, q) for p, q in zip(before, trainer.model.parameters(), strict=True))


def test_a_changed_shape_is_refused_naming_it(new_run, tiny):
    step = _trainer(new_run(), True, **tiny).graph_step
    step.inputs = [
        {"input_ids": torch.zeros(4, 32, dtype=torch.long), "labels": torch.zeros(4, 32, dtype=torch.long)}
    ]
    step._check_shapes(
        [{"input_ids": torch.ones(4, 32, dtype=torch.long), "labels": torch.ones(4, 32, dtype=torch.long)}]
    )
    with pytest.raises(GraphShapeError, match=r"input_ids \(4, 30\) int64 \(captured: \(4, 32\) int64\)"):
        step._check_shapes(
            [
                {
                    "input_ids": torch.ones(4, 30, dtype=torch.long),
                    "labels": torch.ones(4, 32, dtype=torch.long),
                }
            ]
        )


@pytest.mark.parametrize(
    ("over", "words"),
    [
        (dict(long_seq_len=512), "long_seq_len=512"),
        (dict(objective="electra"), "ELECTRA"),
        (dict(model="bart-tiny", objective="infill"), "infilling"),
        (dict(precision="fp16"), "fp16"),
        (dict(gradient_checkpointing=True), "checkpointing"),
    ],
)
def test_varying_shapes_and_host_decisions_are_refused(over, words):
    cfg = TrainConfig(cuda_graphs=True, **over)
    with pytest.raises(TrainConfigError, match=words):
        cfg.validate()


def test_cuda_graphs_without_a_gpu_is_one_clear_error(new_run, tiny, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    args = ["pretrain", "--cuda-graphs", "--out", str(new_run()), "--set", "max_steps=2", "--no-progress"]
    assert main(args) == 2
    assert "cuda_graphs needs a CUDA GPU" in capsys.readouterr().err


def test_triton_dropout_is_refused_torch_dropout_is_not():
    dropping = build_model(ModelConfig.from_name("bert-tiny-cpu", dropout=0.1))
    still = build_model(ModelConfig.from_name("bert-tiny-cpu"))
    with use_backend("triton"):
        assert _triton_dropout(dropping) and not _triton_dropout(still)
    with use_backend("torch"):
        assert not _triton_dropout(dropping)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_captured_steps_match_eager_on_cuda(compiled, new_run, tiny):
    """The capture and replay: never run without a GPU (run_gpu.sh runs it among its first tests)."""
    run = dict(tiny, lr=3e-3, warmup_steps=0, max_steps=8, max_grad_norm=0.05)
    eager = Trainer(
        TrainConfig(model="bert-tiny-cpu", objective="mlm", out=str(new_run(name="eager")), **run)
    )
    graphed = Trainer(
        TrainConfig(
            model="bert-tiny-cpu", objective="mlm", out=str(new_run(name="graph")), cuda_graphs=True,
            compile=compiled, **run,
        )
    )  # fmt: skip
    assert graphed.graph_step is not None and graphed.graph_step.capture
    for _ in range(5):
        a, b = eager.train_step(), graphed.train_step()
        assert b.result.stepped and abs(a.loss - b.loss) <= 1e-4 * abs(a.loss), (a.loss, b.loss)
    assert graphed.graph_step.graph is not None
    for p, q in zip(eager.model.parameters(), graphed.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5)

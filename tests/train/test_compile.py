"""torch.compile of the models (fullgraph: no graph break) with the torch backend and with the triton
backend's custom ops (their fake implementations give the shapes while tracing; the interpreter
runs them on CPU), the graph-mode paths against the eager ones, and ``ptft pretrain --compile``."""

from __future__ import annotations

import json

import pytest
import torch

from ptft_fast.cli import main
from ptft_fast.models import build_model
from ptft_fast.models.config import ModelConfig
from ptft_fast.ops import use_backend
from ptft_fast.ops.graph_mode import in_graph, static_shapes
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.trainer import Trainer

NO_DROP = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
PRESETS = {"bert": "bert-tiny-cpu", "gpt2": "gpt-tiny", "t5": "t5-tiny"}


def _batch(cfg: ModelConfig, seq: int, *, padded: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, cfg.vocab_size, (2, seq), generator=g)
    labels = ids.clone()
    if cfg.arch == "bert":
        labels[torch.rand(2, seq, generator=g) > 0.3] = -100  # ~30% of the tokens scored
    if cfg.arch == "t5":
        labels = labels[:, : seq // 4]
    batch = {"input_ids": ids, "labels": labels}
    if padded:  # the second row ends in padding: a real key padding mask in the graph
        mask = torch.ones(2, seq, dtype=torch.long)
        mask[1, seq - 3 :] = 0
        batch["attention_mask"] = mask
        if cfg.arch == "bert":
            labels[1, seq - 3 :] = -100
    return batch


def _loss_and_grads(model, batch, fn):
    loss = fn(**batch).loss
    return loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize(
    ("arch", "backend", "seq"),
    [
        ("bert", "torch", 128),  # 77 scored rows x 1024 logits: the chunked cross-entropy traced
        ("gpt2", "torch", 128),
        ("t5", "torch", 64),
        ("bert", "triton", 16),
        ("gpt2", "triton", 16),
        ("t5", "triton", 16),
    ],
)
def test_fullgraph_compiles_forward_and_backward(arch, backend, seq):
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(PRESETS[arch], **NO_DROP)
    model = build_model(cfg).train()
    batch = _batch(cfg, seq, padded=arch != "t5")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # a graph break raises
    with use_backend(backend):
        want, want_grads = _loss_and_grads(model, batch, model)
        got, got_grads = _loss_and_grads(model, batch, compiled)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_fullgraph_compiles_with_dropout():
    torch._dynamo.reset()
    cfg = ModelConfig.from_name("bert-tiny-cpu", dropout=0.1, attention_dropout=0.1)
    model = build_model(cfg).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(**_batch(cfg, 32, padded=True)).loss
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.layers[0].attn.qkv.weight.grad is not None


@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5"])
@pytest.mark.parametrize("varlen", [False, True])
def test_graph_mode_paths_compute_what_the_eager_ones_do(arch, varlen):
    """Graph mode skips the shortcuts that need host reads (BERT's labeled-rows-only last layer,
    varlen packing, the MLM head's row selection, dropping an all-true mask): same loss, same grads."""
    if varlen and arch != "bert":
        pytest.skip("varlen packing is a BERT encoder option")
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(PRESETS[arch], **NO_DROP, varlen=varlen)
    model = build_model(cfg).train()
    for padded in (False, True):
        batch = _batch(cfg, 32, padded=padded and arch != "t5")
        want, want_grads = _loss_and_grads(model, batch, model)
        with static_shapes():
            assert in_graph()
            got, got_grads = _loss_and_grads(model, batch, model)
        assert not in_graph()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def _steps(out, model: str, objective: str, steps: int, **over) -> list[float]:
    cfg = TrainConfig(model=model, objective=objective, out=str(out), **over)
    trainer = Trainer(cfg)
    return [trainer.train_step().loss for _ in range(steps)]


@pytest.mark.parametrize(
    ("model", "objective", "kind"),
    [
        ("bert-tiny-cpu", "mlm", "wordpiece"),
        ("gpt-tiny", "clm", "bpe"),
        ("t5-tiny", "span", "unigram"),
        ("bert-tiny-cpu", "electra", "wordpiece"),
        ("bert-tiny-cpu", "spanbert", "wordpiece"),
    ],
)
def test_pretrain_compiled_matches_eager_and_learns(model, objective, kind, new_run, tiny):
    torch._dynamo.reset()
    run = dict(tiny, lr=3e-3, warmup_steps=0, max_steps=12)
    eager = _steps(new_run(kind, "eager"), model, objective, 12, **run)
    compiled = _steps(
        new_run(kind, "compiled"), model, objective, 12, compile=True, compile_backend="aot_eager", **run
    )
    assert abs(compiled[0] - eager[0]) <= 1e-5, (compiled[0], eager[0])
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=0, atol=1e-4)
    assert sum(compiled[-3:]) / 3 < sum(compiled[:3]) / 3 - 0.05, compiled  # it learns


@pytest.mark.slow  # inductor codegen on 2 CPU cores: ~15-80 s per model; aot_eager above is the fast check
def test_ptft_pretrain_compile_flag_with_inductor(new_run, tiny, capsys):
    out = new_run("wordpiece", "inductor")
    args = ["pretrain", "--model", "bert-tiny-cpu", "--objective", "mlm", "--out", str(out), "--compile"]
    for key, value in dict(tiny, max_steps=8, lr=3e-3, warmup_steps=0).items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    eager = _steps(
        new_run("wordpiece", "eager"), "bert-tiny-cpu", "mlm", 1, **dict(tiny, lr=3e-3, warmup_steps=0)
    )
    assert abs(losses[0] - eager[0]) <= 1e-5 and losses[-1] < losses[0]
    assert "run summary" in capsys.readouterr().out

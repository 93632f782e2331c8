"""Gradient accumulation: k micro-batches give the update of one k-times-larger batch, with
per-token normalization over the whole accumulated batch (uneven labeled-token counts)."""

import copy

import pytest
import torch

from ptft_fast.data.shards import TokenShards
from ptft_fast.data.tokenizer import PtftTokenizer
from ptft_fast.models import from_name
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import BatchSource
from ptft_fast.train.objectives import build_for_objective, label_counts, loss_sums
from ptft_fast.train.strategy import TorchStrategy
from ptft_fast.train.trainer import accumulate_step

CASES = [("mlm", "bert-tiny-cpu", "wordpiece"), ("clm", "gpt-tiny", "bpe"), ("span", "t5-tiny", "unigram")]


class RecordingStrategy(TorchStrategy):
    """Keeps a copy of the gradients the update is made from."""

    def step(self, step, elapsed_s=0.0):
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
        return super().step(step, elapsed_s)


def _setup(objective, preset, kind, run_data):
    data = run_data(kind) / "data" / "train"
    tok = PtftTokenizer.from_file(data / "tokenizer.json")
    extra = {"pad_token_id": tok.pad_id}
    if preset == "t5-tiny":
        extra.update(eos_token_id=tok.eos_id, decoder_start_token_id=tok.pad_id)
    model = from_name(preset, vocab_size=tok.vocab_size, **extra).double()
    cfg = TrainConfig(
        objective=objective, seq_len=32, schedule="constant", warmup_steps=0, max_grad_norm=0.0, lr=1e-3
    )
    src = BatchSource(objective, TokenShards(data), tok, cfg, seed=3)
    micro = [src.next(4, 32) for _ in range(3)]
    # uneven labeled-token counts: drop all labels of one row, half of another's
    micro[0]["labels"][0, :] = -100
    micro[1]["labels"][1, : micro[1]["labels"].shape[1] // 2] = -100
    return model, cfg, micro


@pytest.mark.parametrize(("objective", "preset", "kind"), CASES)
def test_k_micro_batches_equal_one_big_batch(objective, preset, kind, run_data):
    model, cfg, micro = _setup(objective, preset, kind, run_data)
    counts = [label_counts(objective, b)["lm"] for b in micro]
    assert len(set(counts)) > 1, f"want uneven labeled-token counts, got {counts}"
    big = {k: torch.cat([b[k] for b in micro]) for k in micro[0]}
    twin = copy.deepcopy(model)
    s_micro = RecordingStrategy(model, cfg, torch.device("cpu"))
    s_big = RecordingStrategy(twin, cfg, torch.device("cpu"))
    out_micro = accumulate_step(objective, model, s_micro, micro, 0, {"lm": 1.0})
    out_big = accumulate_step(objective, twin, s_big, [big], 0, {"lm": 1.0})
    assert out_micro.loss == pytest.approx(out_big.loss, rel=1e-12)
    assert s_micro.grads.keys() == s_big.grads.keys()
    for name, g in s_micro.grads.items():
        torch.testing.assert_close(g, s_big.grads[name], rtol=0, atol=1e-6, msg=name)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_mean_of_means_would_differ(run_data):
    """The check above is sharp: averaging per-micro-batch means gives a different gradient."""
    model, _, micro = _setup("mlm", "bert-tiny-cpu", "wordpiece", run_data)
    big = {k: torch.cat([b[k] for b in micro]) for k in micro[0]}
    total = sum(label_counts("mlm", b)["lm"] for b in micro)
    w = model.encoder.embed_tokens.weight
    g_big = torch.autograd.grad(loss_sums("mlm", model, big)["lm"] / total, w)[0]
    mean_of_means = sum(loss_sums("mlm", model, b)["lm"] / label_counts("mlm", b)["lm"] for b in micro) / 3
    g_mm = torch.autograd.grad(mean_of_means, w)[0]
    assert (g_big - g_mm).abs().max() > 1e-4


def test_electra_terms_are_normalized_separately(run_data):
    model, cfg, micro = _setup("mlm", "bert-tiny-cpu", "wordpiece", run_data)
    electra = build_for_objective("electra", model.config)
    gen = torch.Generator().manual_seed(0)
    out = accumulate_step(
        "electra",
        electra,
        TorchStrategy(electra, cfg, torch.device("cpu")),
        micro,
        0,
        {"lm": 1.0, "disc": 50.0},
        gen,
    )
    assert set(out.terms) == {"lm", "disc"} and all(v > 0 for v in out.terms.values())


def test_gradient_checkpointing_flag_gives_the_same_gradients(run_data):
    model, cfg, micro = _setup("mlm", "bert-tiny-cpu", "wordpiece", run_data)
    ckpt_model = build_for_objective("mlm", model.config.replace(gradient_checkpointing=True)).double()
    ckpt_model.load_state_dict(model.state_dict())
    strategies = [RecordingStrategy(m, cfg, torch.device("cpu")) for m in (model, ckpt_model)]
    for m, s in zip((model, ckpt_model), strategies):
        accumulate_step("mlm", m, s, micro, 0, {"lm": 1.0})
    for name, g in strategies[0].grads.items():
        torch.testing.assert_close(g, strategies[1].grads[name], rtol=0, atol=1e-10, msg=name)

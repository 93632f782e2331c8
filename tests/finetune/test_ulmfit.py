"""ULMFiT's recipe: layer groups bottom to top, per-layer learning rates in the optimizer, the
slanted triangular schedule's shape, and gradual unfreezing (a group's weights do not move
before its epoch, weight decay included)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ptft_fast.finetune import ulmfit
from ptft_fast.finetune.heads import TaskModel
from ptft_fast.finetune.loop import FinetuneConfig, train
from ptft_fast.models import from_name
from ptft_fast.peft import LoraConfig, get_peft_model


def bert_cls(seed=0):
    torch.manual_seed(seed)
    return TaskModel(from_name("bert-tiny-cpu", vocab_size=50, dropout=0.0, attention_dropout=0.0), "cls", 3)


def names_of(model, group):
    ids = {id(p) for p in group}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_layer_groups_bottom_to_top():
    m = bert_cls()
    groups = ulmfit.layer_groups(m)
    assert len(groups) == 4  # embeddings, layer 0, layer 1, the rest
    bottom, l0, l1, top = (names_of(m, g) for g in groups)
    assert bottom == {n for n, _ in m.named_parameters() if ".embed_" in n}
    assert all(".layers.0." in n for n in l0) and all(".layers.1." in n for n in l1)
    assert {n for n in top if n.startswith("head.")} == {
        n for n, _ in m.named_parameters() if n.startswith("head.")
    }
    assert sum(len(g) for g in groups) == len(list(m.parameters()))
    # T5: shared embedding and both relative-position tables at the bottom, encoder layers
    # before decoder layers
    t5 = from_name("t5-tiny", vocab_size=50)
    g = [names_of(t5, x) for x in ulmfit.layer_groups(t5)]
    assert {"shared.weight", "encoder.rel_bias.embed.weight", "decoder.rel_bias.embed.weight"} <= g[0]
    stacks = [next(iter(x)).split(".layers.")[0] for x in g[1:-1]]
    n_enc, n_dec = t5.config.num_layers, t5.config.decoder_layers
    assert stacks == ["encoder"] * n_enc + ["decoder"] * n_dec
    assert "lm_head.weight" in g[-1] or "decoder.final_norm.weight" in g[-1]


def test_discriminative_learning_rates_in_the_optimizer():
    m = bert_cls()
    params = list(m.parameters())
    groups = ulmfit.param_groups(m, params, lr=1e-3, weight_decay=0.01, layer_lr_decay=0.5)
    lr_of = {}
    for g in groups:
        for p in g["params"]:
            lr_of[id(p)] = (g["lr"], g["weight_decay"])
    named = dict(m.named_parameters())
    # head: lr; layer 1: lr·d; layer 0: lr·d²; embeddings: lr·d³
    assert lr_of[id(named["head.3.weight"])] == (1e-3, 0.01)
    assert lr_of[id(named["head.3.bias"])] == (1e-3, 0.0)
    assert lr_of[id(named["backbone.encoder.layers.1.attn.qkv.weight"])] == (5e-4, 0.01)
    assert lr_of[id(named["backbone.encoder.layers.0.mlp.fc_in.weight"])] == (2.5e-4, 0.01)
    assert lr_of[id(named["backbone.encoder.embed_tokens.weight"])] == (1.25e-4, 0.01)
    assert len(lr_of) == len(params)
    # the loop builds its AdamW from them; PEFT parameters follow their layer
    lora = get_peft_model(bert_cls(), "lora", LoraConfig(r=2))
    trainable = [p for p in lora.parameters() if p.requires_grad]
    g = ulmfit.param_groups(lora, trainable, 1e-3, 0.0, 0.5)
    lrs = {n: grp["lr"] for grp in g for n in names_of(lora, grp["params"])}
    assert lrs["backbone.encoder.layers.1.attn.qkv.lora_A"] == 5e-4
    assert lrs["backbone.encoder.layers.0.attn.qkv.lora_A"] == 2.5e-4 and lrs["head.3.weight"] == 1e-3


def test_stlr_shape():
    total, lr = 200, 0.01
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ulmfit.stlr(total, cut_frac=0.1, ratio=32))
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    cut = 20
    assert lrs[0] == pytest.approx(lr / 32) and max(lrs) == pytest.approx(lr) and lrs.index(max(lrs)) == cut
    steps = [b - a for a, b in itertools.pairwise(lrs)]
    rise, fall = steps[:cut], steps[cut:]
    # linear up in cut steps, linear down over the (1/cut_frac - 1) times longer remainder
    assert rise == pytest.approx([lr * (1 - 1 / 32) / cut] * cut)
    assert fall == pytest.approx([-lr * (1 - 1 / 32) / (cut * 9)] * (total - cut))
    assert lrs[-1] == pytest.approx(lr / 32)
    # the loop uses it when asked
    assert ulmfit.schedule("stlr", 100, warmup_ratio=0.1, cut_frac=0.5, ratio=4)(50) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        ulmfit.schedule("cosine", 10, warmup_ratio=0.1, cut_frac=0.1, ratio=32)


def tiny_cls_data(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (n, 7), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 3, (n,), generator=g),
    }


def test_gradual_unfreezing_keeps_lower_groups_until_their_epoch():
    m = bert_cls()
    groups = [names_of(m, g) for g in ulmfit.layer_groups(m)]  # bottom, layer 0, layer 1, top
    named = dict(m.named_parameters())
    start = {n: p.detach().clone() for n, p in named.items()}
    snapshots = []

    def evaluate(model):
        snapshots.append({n: p.detach().clone() for n, p in named.items()})
        return {"accuracy": 0.0}

    cfg = FinetuneConfig(
        epochs=5, batch_size=4, lr=1e-2, weight_decay=0.1, gradual_unfreeze=True, progress=False
    )
    train(m, tiny_cls_data(), evaluate, cfg, metric="accuracy")
    assert len(snapshots) == 5
    for epoch, snap in enumerate(snapshots, start=1):
        live = len(groups) - min(epoch, len(groups))  # groups below this index are still frozen
        for i, group in enumerate(groups):
            moved = [n for n in group if not torch.equal(snap[n], start[n])]
            if i < live:
                assert not moved, (epoch, i, moved[:3])
            else:  # every group being trained has moved (embedding rows of unused ids aside)
                assert moved, (epoch, i)
    # without it, everything moves in epoch 1
    m2 = bert_cls()
    snapshots.clear()
    start = {n: p.detach().clone() for n, p in m2.named_parameters()}
    named = dict(m2.named_parameters())
    train(
        m2,
        tiny_cls_data(),
        evaluate,
        FinetuneConfig(epochs=1, batch_size=4, lr=1e-2, progress=False),
        metric="accuracy",
    )
    assert not torch.equal(
        snapshots[0]["backbone.encoder.embed_positions.weight"],
        start["backbone.encoder.embed_positions.weight"],
    )


def test_loop_uses_the_per_layer_rates():
    """One step of the loop with STLR and decay 0.5: each group's lr is its initial lr times the
    schedule's first multiplier (1/ratio)."""
    m = bert_cls()
    seen = {}
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.setdefault("lrs", sorted({g["lr"] for g in self.param_groups}))
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        cfg = FinetuneConfig(
            epochs=1, batch_size=12, lr=1e-3, layer_lr_decay=0.5, schedule="stlr", progress=False
        )
        train(m, tiny_cls_data(), lambda _: {"accuracy": 0.0}, cfg, metric="accuracy")
    finally:
        torch.optim.AdamW.step = orig
    assert seen["lrs"] == pytest.approx([1e-3 * 0.5**k / 32 for k in (3, 2, 1, 0)])
    assert math.isclose(ulmfit.stlr(1)(0), 1 / 32)


def test_cli_options_reach_the_loop(tmp_path, make_model_dir, ft_wordpiece, capsys):
    """ptft finetune --gradual-unfreeze --layer-lr-decay --schedule stlr: after one epoch only the
    top layer group (the head, final parts) has moved; the saved backbone's layers are the base's."""
    from safetensors.torch import load_file

    from ptft_fast.cli import main

    base = make_model_dir("bert-tiny-cpu", ft_wordpiece)
    data = tmp_path / "t.tsv"
    data.write_text(
        "sentence\tlabel\n" + "".join(f"{w} text {i}\t{'ab'[i % 2]}\n" for i, w in enumerate("abcdefgh"))
    )
    out = tmp_path / "out"
    rc = main(["finetune", "--model", str(base), "--task", "cls", "--train", str(data), "--eval", str(data),
               "--epochs", "1", "--batch-size", "4", "--lr", "1e-2", "--gradual-unfreeze", "--layer-lr-decay", "0.5",
               "--schedule", "stlr", "--no-baselines", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    before, after = load_file(base / "model.safetensors"), load_file(out / "best" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # embeddings and layers frozen in epoch 1
    head = load_file(out / "best" / "head.safetensors")
    assert head and "baseline" not in capsys.readouterr().out

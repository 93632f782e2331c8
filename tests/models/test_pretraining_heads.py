"""SpanBERT's span-boundary head and ELECTRA's narrow generator, against explicit references."""

import pytest
import torch
import torch.nn.functional as F

from ptft_fast.data.masking import span_boundaries
from ptft_fast.models.config import ModelConfig
from ptft_fast.models.pretraining_heads import SpanBoundaryHead, generator_config
from ptft_fast.train.objectives import ElectraModel

IGNORE = -100


def _runs(row: list[bool]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, c in enumerate([*row, False]):
        if c and start is None:
            start = i
        if not c and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def test_span_boundaries_against_a_loop():
    g = torch.Generator().manual_seed(0)
    chosen = torch.rand(6, 40, generator=g) < 0.4
    start, end = span_boundaries(chosen)
    for b in range(6):
        want_s, want_e = torch.full((40,), -1), torch.full((40,), 40)
        for s, e in _runs(chosen[b].tolist()):
            want_s[s : e + 1], want_e[s : e + 1] = s, e
        assert torch.equal(start[b], want_s) and torch.equal(end[b], want_e)


def _spans_batch():
    labels = torch.full((2, 12), IGNORE)
    labels[0, 2:5] = torch.tensor([7, 8, 9])  # span 2..4: boundaries 1 and 5
    labels[0, 8] = 3  # one-token span: boundaries 7 and 9
    labels[1, 1:7] = torch.arange(10, 16)  # six tokens: offsets 0..5
    return labels


def test_sbo_loss_matches_the_papers_formula():
    cfg = ModelConfig.from_name("bert-tiny-cpu", vocab_size=50)
    head = SpanBoundaryHead(cfg).double()
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 12, 64, generator=g, dtype=torch.float64)
    weight = torch.randn(50, 64, generator=g, dtype=torch.float64)
    labels = _spans_batch()
    start, end = span_boundaries(labels != IGNORE)
    got = head.loss(hidden, weight, start, end, labels)
    terms = []
    for b in range(2):
        for s, e in _runs((labels[b] != IGNORE).tolist()):
            for i in range(s, e + 1):
                h0 = torch.cat([hidden[b, s - 1], hidden[b, e + 1], head.position.weight[i - s]])
                h1 = F.layer_norm(F.gelu(h0 @ head.fc1.weight.T + head.fc1.bias), (64,), head.norm1.weight, head.norm1.bias, eps=cfg.norm_eps)  # fmt: skip
                y = F.layer_norm(F.gelu(h1 @ head.fc2.weight.T + head.fc2.bias), (64,), head.norm2.weight, head.norm2.bias, eps=cfg.norm_eps)  # fmt: skip
                terms.append(F.cross_entropy((y @ weight.T + head.bias)[None], labels[b, i][None]))
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-10)


def test_sbo_sees_only_the_boundaries():
    """The span's own states never reach its prediction: the gradient of the SBO loss w.r.t. the
    hidden states is non-zero exactly at the tokens just outside each span."""
    cfg = ModelConfig.from_name("bert-tiny-cpu", vocab_size=50)
    head = SpanBoundaryHead(cfg).double()
    hidden = torch.randn(2, 12, 64, dtype=torch.float64, requires_grad=True)
    labels = _spans_batch()
    start, end = span_boundaries(labels != IGNORE)
    head.loss(hidden, torch.randn(50, 64, dtype=torch.float64), start, end, labels).backward()
    touched = hidden.grad.abs().sum(-1) > 0
    want = torch.zeros(2, 12, dtype=torch.bool)
    want[0, [1, 5, 7, 9]] = True
    want[1, [0, 7]] = True
    assert torch.equal(touched, want)


@pytest.mark.parametrize(
    ("name", "size", "hidden", "heads", "ffn"),
    [("bert-base", 1 / 3, 256, 4, 1024), ("bert-base", 0.25, 192, 3, 768), ("bert-tiny-cpu", 1 / 3, 24, 1, 48),
     ("bert-tiny-cpu", 1.0, 64, 2, 128), ("bert-large", 1 / 3, 320, 5, 1280)],
)  # fmt: skip
def test_generator_config_scales_width_heads_and_mlp(name, size, hidden, heads, ffn):
    disc = ModelConfig.from_name(name)
    gen = generator_config(disc, size)
    assert (gen.hidden_size, gen.num_heads, gen.ffn_size) == (hidden, heads, ffn)
    assert gen.num_layers == disc.num_layers and gen.vocab_size == disc.vocab_size


def test_electra_generator_shares_the_discriminators_embeddings():
    cfg = ModelConfig.from_name("bert-tiny-cpu", vocab_size=100)
    model = ElectraModel(cfg, 1 / 3)
    assert not any("embed" in n for n, _ in model.generator.named_parameters())  # none of its own
    ids = torch.randint(5, 100, (2, 16))
    labels = torch.full_like(ids, IGNORE)
    labels[:, 3] = ids[:, 3]
    out = model.generate({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    assert out.logits.shape == (2, 100)
    out.loss.backward()
    enc = model.discriminator.encoder
    for p in (enc.embed_tokens.weight, enc.embed_positions.weight, enc.embed_types.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    gen_params = sum(p.numel() for p in model.generator.layers.parameters())
    disc_params = sum(p.numel() for p in enc.layers.parameters())
    assert 0.05 < gen_params / disc_params < 0.2  # ≈ (24/64)² of the layer weights

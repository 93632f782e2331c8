"""Model-core behaviour: configs, varlen = padded, KV cache = full forward, checkpointing = same
grads, masked-token loss = full cross-entropy, tiny presets train."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from installed import import_or_skip

from ptft_fast.models import PRESETS, ConfigError, KVCache, ModelConfig, build_model, from_name
from ptft_fast.models.encoder_decoder import relative_position_bucket

TOL = dict(atol=1e-5, rtol=1e-5)


def _perturb_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm.bias")) or name.endswith("mlm.bias"):
                p.add_(torch.randn_like(p) * 0.1)


def _padded_batch(vocab=1024, b=3, t=12, pad=0):
    ids = torch.randint(3, vocab, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids = ids.masked_fill(mask == 0, pad)
    labels = torch.where(torch.rand(b, t) < 0.3, ids, -100).masked_fill(mask == 0, -100)
    labels[:, 0] = ids[:, 0]
    return ids, mask, labels


# ----------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    cfg = ModelConfig.from_name(name)
    assert cfg.attn_dim % cfg.num_heads == 0
    assert cfg.is_encoder_decoder == (cfg.arch in ("t5", "bart"))


def test_named_presets_shapes():
    assert ModelConfig.from_name("bert-base").num_layers == 12
    assert ModelConfig.from_name("t5-small").activation == "relu"
    v11 = ModelConfig.from_name("t5-v1_1-base")
    assert v11.gated_ffn and not v11.tie_word_embeddings and v11.activation == "gelu_tanh"
    assert ModelConfig.from_name("gpt2-medium").hidden_size == 1024


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(hidden_size=100, num_heads=3), r"hidden_size \(100\) must be divisible by num_heads \(3\)"),
        (dict(activation="tanh"), r"activation must be one of .* got 'tanh'"),
        (dict(arch="llama"), r"arch must be one of .* got 'llama'"),
        (dict(dropout=1.5), r"dropout must be in \[0, 1\), got 1.5"),
        (dict(num_layers=0), r"num_layers must be a positive int, got 0"),
        (dict(pad_token_id=50000, vocab_size=100), r"pad_token_id must be in \[0, vocab_size=100\)"),
        (dict(eos_token_id=100, vocab_size=100), r"eos_token_id must be in \[0, vocab_size=100\)"),
        (dict(bos_token_id=-1), r"bos_token_id must be in \[0, vocab_size="),
        (
            dict(arch="bart", decoder_start_token_id=300, vocab_size=300),
            r"decoder_start_token_id must be in \[0, vocab_size=300\)",
        ),
        (dict(arch="gpt2", varlen=True), r"varlen is an encoder-only"),
        (dict(arch="bert", prefix_lm=True), r"prefix_lm is a decoder-only \(gpt2\) option, got arch 'bert'"),
        (
            dict(arch="t5", decoder_start_token_id=None, max_position_embeddings=0),
            r"decoder_start_token_id is required",
        ),
        (dict(gated_ffn=True), r"gated_ffn is only supported for t5"),
    ],
)
def test_invalid_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match=r"unknown model preset 'bert-huge'.*bert-base"):
        ModelConfig.from_name("bert-huge")
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\) \['hidden'\]"):
        ModelConfig.from_name("bert-tiny", hidden=3)
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelConfig.from_name("bert-tiny").replace(hidden_size=129)
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model({"arch": "bert"})


def test_too_long_sequence():
    model = from_name("bert-tiny-cpu")
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=128"):
        model(torch.zeros(1, 129, dtype=torch.long))


# ---------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("preset", ["bert-tiny-cpu", "roberta-tiny"])
def test_varlen_equals_padded(preset):
    pad = 1 if preset.startswith("roberta") else 0
    ids, mask, labels = _padded_batch(pad=pad)
    torch.manual_seed(0)
    padded = from_name(preset)
    _perturb_norms(padded)
    varlen = build_model(padded.config.replace(varlen=True))
    varlen.load_state_dict(padded.state_dict())
    out_p = padded(ids, mask, labels=labels, return_logits=True)
    out_v = varlen(ids, mask, labels=labels, return_logits=True)
    rows = mask.bool()
    torch.testing.assert_close(out_v.logits[rows], out_p.logits[rows], **TOL)
    torch.testing.assert_close(out_v.loss, out_p.loss, **TOL)
    assert torch.all(out_v.hidden_states[~rows] == 0)
    out_p.loss.backward()
    out_v.loss.backward()
    for (name, a), b in zip(padded.named_parameters(), varlen.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)


@pytest.mark.parametrize("varlen", [False, True], ids=["padded", "varlen"])
@pytest.mark.parametrize("preset", ["bert-tiny-cpu", "roberta-tiny"])
def test_mlm_loss_only_path_equals_full_cross_entropy(preset, varlen):
    """The loss-only path (last layer, transform and vocab projection on labeled rows only)
    gives the loss and every gradient of CE over the full logits."""
    ids, mask, labels = _padded_batch(pad=1 if preset.startswith("roberta") else 0)
    model = from_name(preset, varlen=varlen)
    _perturb_norms(model)
    out = model(ids, mask, labels=labels, return_logits=True)
    ref = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref, **TOL)
    params = [p for _, p in model.named_parameters()]
    full_grads = torch.autograd.grad(ref, params)
    loss_only = model(ids, mask, labels=labels)
    assert loss_only.logits is None and loss_only.hidden_states is None
    torch.testing.assert_close(loss_only.loss, ref, **TOL)
    fast_grads = torch.autograd.grad(loss_only.loss, params)
    for (name, _), g_fast, g_full in zip(model.named_parameters(), fast_grads, full_grads, strict=True):
        torch.testing.assert_close(g_fast, g_full, **TOL, msg=name)


def test_nsp_head():
    model = from_name("bert-tiny-cpu", nsp_head=True)
    ids, mask, labels = _padded_batch()
    out = model(ids, mask, labels=labels, next_sentence_label=torch.tensor([0, 1, 1]))
    assert out.nsp_logits.shape == (3, 2)
    out.loss.backward()
    assert model.nsp.classifier.weight.grad is not None
    with pytest.raises(ValueError, match="no NSP head"):
        from_name("bert-tiny-cpu")(ids, next_sentence_label=torch.tensor([0, 1, 1]))


# ------------------------------------------------------------------------------ checkpointing


@pytest.mark.parametrize("preset", ["bert-tiny-cpu", "gpt-tiny", "t5-tiny", "bart-tiny"])
def test_gradient_checkpointing_same_grads(preset):
    cfg = ModelConfig.from_name(preset, dropout=0.1)
    ref_model = build_model(cfg)
    ckpt_model = build_model(cfg.replace(gradient_checkpointing=True))
    ckpt_model.load_state_dict(ref_model.state_dict())
    ids, mask, labels = _padded_batch(pad=cfg.pad_token_id or 0)
    kwargs = dict(labels=labels) if cfg.arch != "t5" and cfg.arch != "bart" else dict(labels=labels[:, :7])
    grads = []
    for model in (ref_model, ckpt_model):
        model.train()
        torch.manual_seed(123)  # same dropout masks: checkpointing replays the RNG state
        loss = model(ids, mask, **kwargs).loss
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, **TOL, msg=name)


# ----------------------------------------------------------------------------------- KV cache


def test_gpt2_kv_cache_matches_full_forward():
    model = from_name("gpt-tiny").eval()
    ids = torch.randint(0, 1024, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :4], use_cache=True)
        steps = [out.logits]
        cache = out.cache
        for t in range(4, 10):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    assert isinstance(cache, KVCache) and cache.length == 10
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_gpt2_kv_cache_with_padding_mask():
    model = from_name("gpt-tiny").eval()
    ids = torch.randint(0, 1024, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0  # left padding in the prompt
    with torch.no_grad():
        full = model(ids, mask).logits
        out = model(ids[:, :5], mask[:, :5], use_cache=True)
        out2 = model(ids[:, 5:], mask, cache=out.cache, use_cache=True)
    real = mask.bool()
    torch.testing.assert_close(torch.cat([out.logits, out2.logits], 1)[real], full[real], **TOL)


@pytest.mark.parametrize("preset", ["t5-tiny", "t5-v1_1-tiny", "bart-tiny"])
def test_encoder_decoder_kv_cache(preset):
    model = from_name(preset).eval()
    src = torch.randint(3, 1024, (2, 9))
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    tgt = torch.randint(3, 1024, (2, 7))
    with torch.no_grad():
        full = model(src, src_mask, decoder_input_ids=tgt).logits
        memory = model.encode(src, src_mask)
        cache, steps = None, []
        for t in range(7):
            out = model(
                attention_mask=src_mask,
                decoder_input_ids=tgt[:, t : t + 1],
                encoder_hidden_states=memory,
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_cache_with_checkpointing_rejected():
    model = from_name("gpt-tiny", gradient_checkpointing=True).train()
    with pytest.raises(ValueError, match="use_cache=True cannot be combined with gradient checkpointing"):
        model(torch.zeros(1, 4, dtype=torch.long), use_cache=True)


# -------------------------------------------------------------------------------------- misc


def test_t5_buckets_match_transformers():
    t5 = import_or_skip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-300, 301)[None, :]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            ours = relative_position_bucket(
                rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance
            )
            ref = t5.T5Attention._relative_position_bucket(rel, bidirectional, buckets, distance)
            assert torch.equal(ours, ref)


@pytest.mark.parametrize("preset", ["bert-tiny-cpu", "gpt-tiny", "t5-tiny", "bart-tiny"])
def test_tiny_presets_train(preset):
    model = from_name(preset)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(3, 64, (4, 16))
    labels = ids if preset != "bert-tiny-cpu" else torch.where(torch.rand(4, 16) < 0.3, ids, -100)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_mlm_without_labeled_tokens():
    model = from_name("bert-tiny-cpu")
    ids = torch.randint(3, 1024, (2, 8))
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.count_nonzero(model.encoder.embed_tokens.weight.grad) == 0


@pytest.mark.parametrize("preset", ["bert-tiny-cpu", "gpt-tiny", "t5-tiny", "bart-tiny"])
def test_models_build_on_the_public_norm_modules(preset):
    """Every norm of the model core is a ptft_fast.nn module (the drop-ins the package ships)."""
    from ptft_fast.nn import LayerNorm, RMSNorm

    norms = [m for m in from_name(preset).modules() if "norm" in type(m).__name__.lower()]
    assert norms and all(type(m) in (LayerNorm, RMSNorm) for m in norms), {type(m) for m in norms}


@pytest.mark.parametrize(
    "preset, cross, bias",
    [("bert-tiny-cpu", False, True), ("roberta-tiny", False, True), ("gpt-tiny", False, True),
     ("t5-tiny", True, False), ("bart-tiny", True, True)],
)  # fmt: skip
def test_attention_is_the_public_module_with_the_checkpoint_names(preset, cross, bias):
    """Every family's attention is ``ptft_fast.nn.Attention`` (fused qkv for self-attention, q + kv
    for cross-attention) and keeps the state-dict names saved checkpoints and the HF mapping use."""
    from ptft_fast.nn import Attention

    model = from_name(preset)
    layers = [m for n, m in model.named_modules() if n.endswith(".attn") or n.endswith(".cross")]
    assert layers and all(type(m) is Attention for m in layers)
    names = {k.split(".attn.")[-1] for k in model.state_dict() if ".attn." in k}
    cross_names = {k.split(".cross.")[-1] for k in model.state_dict() if ".cross." in k}
    params = ("weight", "bias") if bias else ("weight",)
    assert names == {f"{p}.{w}" for p in ("qkv", "out") for w in params}
    assert cross_names == ({f"{p}.{w}" for p in ("q", "kv", "out") for w in params} if cross else set())

"""Parity with Hugging Face transformers, both directions, no downloads.

Random-init transformers models from small configs (every weight, norm and bias perturbed so
nothing is trivially 0/1) are saved with ``save_pretrained`` and loaded with
``ptft_fast.hf.load_pretrained``: logits and loss must match within 1e-4 in fp32, with and without
padding. Our models saved with ``ptft_fast.hf.save_pretrained`` load in transformers with the
same logits.
"""

from __future__ import annotations

import pytest
import torch
from installed import import_or_skip

transformers = import_or_skip("transformers")

from ptft_fast.hf import CheckpointKeyError, UnsupportedCheckpointError, load_pretrained, save_pretrained  # noqa: E402
from ptft_fast.models import from_name  # noqa: E402

V = 99
TOL = dict(atol=1e-4, rtol=1e-4)


def _perturb(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            is_norm_weight = ("norm" in name.lower() or "ln_" in name) and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_weight else noise * 2)
        for name, b in model.named_buffers():
            if name.endswith("final_logits_bias"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)


def _hf_model(family: str):
    t = transformers
    small = dict(vocab_size=V)
    if family in ("bert", "bert-nsp", "roberta"):
        kw = dict(small, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
        if family == "roberta":
            return t.RobertaForMaskedLM(t.RobertaConfig(**kw, max_position_embeddings=40, type_vocab_size=1))
        cls = t.BertForPreTraining if family == "bert-nsp" else t.BertForMaskedLM
        return cls(t.BertConfig(**kw, max_position_embeddings=40))
    if family == "gpt2":
        return t.GPT2LMHeadModel(
            t.GPT2Config(
                **small, n_embd=32, n_layer=2, n_head=4, n_positions=40, bos_token_id=0, eos_token_id=0
            )
        )
    if family in ("t5", "t5-v1_1"):
        kw = dict(
            small,
            d_model=32,
            d_kv=16,
            d_ff=37,
            num_layers=2,
            num_decoder_layers=3,
            num_heads=4,
            decoder_start_token_id=0,
        )
        kw.update(relative_attention_num_buckets=8, relative_attention_max_distance=20)
        if family == "t5-v1_1":
            kw.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        return t.T5ForConditionalGeneration(t.T5Config(**kw))
    kw = dict(small, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4)
    kw.update(decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=40)
    return t.BartForConditionalGeneration(t.BartConfig(**kw, scale_embedding=True))


def _batch(family: str, padded: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    b, s, t = 3, 13, 9
    pad = 1 if family in ("roberta", "bart") else 0
    ids = torch.randint(3, V, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.long)
    if padded:
        mask[1, 9:] = 0
        mask[2, 4:] = 0
        ids = ids.masked_fill(mask == 0, pad)
    if family in ("t5", "t5-v1_1", "bart"):
        labels = torch.randint(3, V, (b, t), generator=gen)
        if padded:
            labels[1, 6:] = -100
        return dict(input_ids=ids, attention_mask=mask, labels=labels)
    if family == "gpt2":
        return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    labels = torch.where(torch.rand(b, s, generator=gen) < 0.3, ids, -100).masked_fill(mask == 0, -100)
    labels[0, 0] = ids[0, 0]  # at least one labeled token
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    if family.startswith("bert"):
        batch["token_type_ids"] = (torch.arange(s) >= 6).long().expand(b, s).contiguous()
    return batch


def _hf_forward(model, family: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(**batch)
    logits = out.prediction_logits if family == "bert-nsp" else out.logits
    return logits, out.loss


def _ours_forward(model, family: str, batch: dict):
    return model(**batch, return_logits=True)


FAMILIES = ["bert", "bert-nsp", "roberta", "gpt2", "t5", "t5-v1_1", "bart"]


def _valid_rows(family: str, batch: dict) -> torch.Tensor:
    """(B, T) positions whose logits are defined (real tokens; padded encoder rows attend too)."""
    if family in ("t5", "t5-v1_1", "bart"):
        return torch.ones_like(batch["labels"], dtype=torch.bool)
    return batch["attention_mask"].bool()


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hf_to_ours(family, padded, tmp_path):
    hf = _hf_model(family)
    _perturb(hf)
    hf.eval()
    hf.save_pretrained(tmp_path)
    ours, _ = load_pretrained(tmp_path)
    ours.eval()
    batch = _batch(family, padded)
    if family == "bert-nsp":
        batch["next_sentence_label"] = torch.tensor([0, 1, 0])
    with torch.no_grad():
        ref_logits, ref_loss = _hf_forward(hf, family, batch)
        out = _ours_forward(ours, family, batch)
    rows = _valid_rows(family, batch)
    torch.testing.assert_close(out.logits[rows], ref_logits[rows], **TOL)
    torch.testing.assert_close(out.loss, ref_loss, **TOL)
    if family == "bert-nsp":
        torch.testing.assert_close(out.nsp_logits, hf(**batch).seq_relationship_logits, **TOL)


HF_CLASSES = {
    "bert-tiny-cpu": "BertForMaskedLM",
    "roberta-tiny": "RobertaForMaskedLM",
    "gpt-tiny": "GPT2LMHeadModel",
    "t5-tiny": "T5ForConditionalGeneration",
    "t5-v1_1-tiny": "T5ForConditionalGeneration",  # untied head: lm_head.weight written and loaded
    "bart-tiny": "BartForConditionalGeneration",
}


@pytest.mark.parametrize("preset", sorted(HF_CLASSES))
def test_ours_to_hf(preset, tmp_path):
    ids = dict(bos_token_id=V - 1, eos_token_id=V - 1) if preset == "gpt-tiny" else {}  # inside V
    ours = from_name(preset, vocab_size=V, scale_embedding=preset.startswith("bart"), **ids)
    _perturb(ours)
    ours.eval()
    save_pretrained(ours, tmp_path)
    hf = getattr(transformers, HF_CLASSES[preset]).from_pretrained(tmp_path).eval()
    family = {"bert-tiny-cpu": "bert", "roberta-tiny": "roberta", "gpt-tiny": "gpt2"}.get(
        preset, preset.split("-")[0]
    )
    batch = _batch(family, padded=True)
    with torch.no_grad():
        ref_logits, ref_loss = _hf_forward(hf, family, batch)
        out = _ours_forward(ours, family, batch)
    rows = _valid_rows(family, batch)
    torch.testing.assert_close(ref_logits[rows], out.logits[rows], **TOL)
    torch.testing.assert_close(ref_loss, out.loss, **TOL)


def _left_padded(lengths=(11, 6, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    t = max(lengths)
    ids = torch.randint(3, V, (len(lengths), t), generator=gen)
    mask = (torch.arange(t) >= t - torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


def test_gpt2_left_padding_positions_and_generate(tmp_path):
    """Left-padded GPT-2: our default positions (real tokens counted) give transformers' logits
    at the same position_ids, and greedy generation matches transformers' generate."""
    from ptft_fast.generate import GenerationConfig, generate

    hf = _hf_model("gpt2")
    _perturb(hf)
    hf.eval()
    hf.save_pretrained(tmp_path)
    ours, _ = load_pretrained(tmp_path)
    ours.eval()
    ids, mask = _left_padded()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    real = mask.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        torch.testing.assert_close(ours(ids, mask).logits[real], ref[real], **TOL)
        torch.testing.assert_close(ours(ids, mask, position_ids=positions).logits[real], ref[real], **TOL)
        ref_tokens = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    cfg = GenerationConfig(max_new_tokens=8, eos_token_id=0, pad_token_id=0)  # the config's eos
    for use_cache in (True, False):
        tokens = generate(ours, ids, mask, cfg, use_cache=use_cache)
        assert torch.equal(tokens, ref_tokens[:, ids.shape[1] :])


def test_round_trip_t5_v1_1_untied(tmp_path):
    """A v1.1 model with its own LM head survives our save → our load exactly."""
    ours = from_name("t5-v1_1-tiny", vocab_size=V)
    _perturb(ours)
    save_pretrained(ours, tmp_path)
    again, config = load_pretrained(tmp_path)
    assert not config.tie_word_embeddings and config.gated_ffn and not config.scale_decoder_outputs
    for (k, a), (k2, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_pytorch_model_bin(tmp_path):
    hf = _hf_model("gpt2")
    _perturb(hf)
    hf.eval()
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save({k.removeprefix("transformer."): v for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    ours, _ = load_pretrained(tmp_path)
    ours.eval()
    batch = _batch("gpt2", padded=False)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).loss, hf(**batch).loss, **TOL)


def test_unknown_architecture(tmp_path):
    transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedCheckpointError, match=r"BertForSequenceClassification.*BertForMaskedLM"):
        load_pretrained(tmp_path)


def test_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = _hf_model("bert")
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state.pop("bert.encoder.layer.1.output.dense.bias")
    state["bert.encoder.layer.7.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointKeyError) as err:
        load_pretrained(tmp_path)
    msg = str(err.value)
    assert "missing (1): bert.encoder.layer.1.output.dense.bias" in msg
    assert "unexpected (1): bert.encoder.layer.7.extra.weight" in msg


def _hf_layer_outputs(out, family: str) -> dict[str, tuple]:
    """transformers' per-layer outputs under our ModelOutput field names."""
    if family in ("t5", "t5-v1_1", "bart"):
        return {
            "encoder_all_hidden_states": out.encoder_hidden_states,
            "encoder_attentions": out.encoder_attentions,
            "all_hidden_states": out.decoder_hidden_states,
            "attentions": out.decoder_attentions,
            "cross_attentions": out.cross_attentions,
        }
    return {"all_hidden_states": out.hidden_states, "attentions": out.attentions}


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "t5", "t5-v1_1", "bart"])
def test_hidden_states_and_attentions_match_transformers(family, tmp_path):
    """output_hidden_states / output_attentions: every layer's output (embeddings first, the last
    after the final norm where there is one) and every attention probability map, self and
    cross, equal transformers' (eager attention) on a right-padded batch, at the positions whose
    outputs are defined (GPT-2 places padding tokens elsewhere than transformers)."""
    hf = _hf_model(family)
    _perturb(hf)
    hf.eval()
    hf.save_pretrained(tmp_path)
    hf.set_attn_implementation("eager")  # the probabilities are only returned by eager attention
    ours, _ = load_pretrained(tmp_path)
    ours.eval()
    batch = _batch(family, padded=True)
    flags = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        ref = _hf_layer_outputs(hf(**batch, **flags), family)
        out = ours(**batch, **flags)
    layers = 3 if family in ("t5", "t5-v1_1", "bart") else 2  # decoder (or only) stack depth
    assert len(out.all_hidden_states) == layers + 1 and len(out.attentions) == layers
    rows = _valid_rows(family, batch)  # (B, T) of the decoder (or only) stack
    enc_rows = batch["attention_mask"].bool()
    for name, expected in ref.items():
        got = getattr(out, name)
        assert got is not None and len(got) == len(expected), name
        valid = enc_rows if name.startswith("encoder") else rows
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            if a.dim() == 4:  # (B, H, Tq, Tk): the query rows of defined positions
                a, b = a.transpose(1, 2), b.transpose(1, 2)
            torch.testing.assert_close(a[valid], b[valid], **TOL, msg=lambda m, n=name, i=i: f"{n}[{i}]: {m}")
    if family == "gpt2":  # the last entry is after the final norm, the one before is not
        torch.testing.assert_close(out.all_hidden_states[-1], out.hidden_states, atol=0, rtol=0)
    none = ours(**batch)
    assert none.all_hidden_states is None and none.attentions is None

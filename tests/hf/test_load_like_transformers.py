"""``ptft_fast.hf.load_pretrained`` loads what transformers loads (no downloads).

Special-token ids outside the vocabulary, missing optional keys, unused keys, sharded
safetensors and pytorch_model.bin with an index, untied heads and the dtype in config.json load
(with a warning where something is filled in or dropped) to transformers' logits; it refuses,
with one line naming the field or key, only where the model would compute something else.
"""

from __future__ import annotations

import json

import pytest
import torch
from installed import import_or_skip
from safetensors.torch import load_file, save_file

from ptft_fast.hf import UnsupportedCheckpointError, load_pretrained, save_pretrained

transformers = import_or_skip("transformers")

TOL = dict(atol=1e-5, rtol=1e-5)


def _perturb(model):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("final_logits_bias"):
                b.normal_(0.0, 0.5, generator=gen)
    return model.eval()


def _gpt2(**kw):
    cfg = dict(vocab_size=331, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return _perturb(transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**cfg, **kw})))


def _bert(**kw):
    cfg = dict(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    return _perturb(transformers.BertForMaskedLM(transformers.BertConfig(**{**cfg, **kw})))


def _bart(**kw):
    cfg = dict(vocab_size=99, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4)
    cfg.update(decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=40)
    return _perturb(transformers.BartForConditionalGeneration(transformers.BartConfig(**{**cfg, **kw})))


def _same_logits(ours, hf, vocab: int, seq2seq: bool = False):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, vocab, (2, 9), generator=gen)
    extra = {"decoder_input_ids": ids[:, :5]} if seq2seq else {}
    with torch.no_grad():
        expected = hf.eval()(input_ids=ids, **extra).logits
        got = ours.eval()(input_ids=ids, **extra, return_logits=True).logits
    torch.testing.assert_close(got, expected, **TOL)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_gpt2_with_the_default_special_ids_outside_a_small_vocab_loads(tmp_path):
    """The issue's case: GPT2Config(vocab_size=331) keeps bos/eos = 50256; transformers loads it."""
    hf = _gpt2()
    assert hf.config.bos_token_id == hf.config.eos_token_id == 50256
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning) as caught:
        ours, config = load_pretrained(tmp_path)
    said = " | ".join(str(w.message) for w in caught)
    assert "bos_token_id=50256 is outside the vocabulary (vocab_size=331); loaded as None" in said
    assert "eos_token_id=50256 is outside the vocabulary" in said
    assert config.bos_token_id is None and config.eos_token_id is None
    _same_logits(ours, hf, 331)


def test_several_eos_ids_keep_the_first_inside_the_vocabulary(tmp_path):
    _gpt2(bos_token_id=0).save_pretrained(tmp_path)
    _edit_config(tmp_path, eos_token_id=[50256, 2, 5])
    with pytest.warns(UserWarning, match=r"eos_token_id=\[50256, 2, 5\] is a list; using 2"):
        assert load_pretrained(tmp_path)[1].eos_token_id == 2


@pytest.mark.parametrize(
    "build,field",
    [(_bert, "pad_token_id"), (_bart, "decoder_start_token_id"), (_bart, "pad_token_id")],
)
def test_ids_the_forward_pass_reads_are_refused_outside_the_vocabulary(build, field, tmp_path):
    build().save_pretrained(tmp_path)
    _edit_config(tmp_path, **{field: 500})
    with pytest.raises(
        UnsupportedCheckpointError, match=rf"{field}=500 is outside the vocabulary \(vocab_size=99\)"
    ):
        load_pretrained(tmp_path)


def _drop(path, *keys, add=None):
    state = load_file(path / "model.safetensors")
    for key in keys:
        state.pop(key)
    state.update(add or {})
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return state


def test_missing_final_logits_bias_is_zero_as_in_transformers(tmp_path):
    hf = _bart()
    hf.save_pretrained(tmp_path)
    _drop(tmp_path, "final_logits_bias")
    with pytest.warns(UserWarning, match="final_logits_bias not in the checkpoint; zeros"):
        ours, _ = load_pretrained(tmp_path)
    reloaded = transformers.BartForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.final_logits_bias.abs().sum() == 0
    _same_logits(ours, reloaded, 99, seq2seq=True)


@pytest.mark.parametrize("alias", [True, False], ids=["decoder-bias", "none"])
def test_mlm_bias_under_its_other_name_or_missing(alias, tmp_path):
    hf = _bert()
    hf.save_pretrained(tmp_path)
    bias = load_file(tmp_path / "model.safetensors")["cls.predictions.bias"]
    _drop(tmp_path, "cls.predictions.bias", add={"cls.predictions.decoder.bias": bias} if alias else None)
    if alias:
        ours, _ = load_pretrained(tmp_path)
    else:
        with pytest.warns(UserWarning, match=r"cls\.predictions\.bias not in the checkpoint; zeros"):
            ours, _ = load_pretrained(tmp_path)
    reloaded = transformers.BertForMaskedLM.from_pretrained(tmp_path)
    assert torch.equal(ours.mlm.bias, bias if alias else torch.zeros_like(bias))
    _same_logits(ours, reloaded, 99)


def test_unused_keys_are_a_warning_like_transformers(tmp_path):
    """A BertForMaskedLM config over a pre-training checkpoint (pooler, NSP head), as published."""
    pre = _perturb(transformers.BertForPreTraining(_bert().config))
    pre.save_pretrained(tmp_path)
    _edit_config(tmp_path, architectures=["BertForMaskedLM"])
    with pytest.warns(
        UserWarning, match=r"4 checkpoint key\(s\) the bert model does not use, ignored.*pooler"
    ):
        ours, _ = load_pretrained(tmp_path)
    _same_logits(ours, transformers.BertForMaskedLM.from_pretrained(tmp_path), 99)


def _split(state: dict, n: int = 3) -> list[dict]:
    keys = sorted(state)
    return [{k: state[k] for k in keys[i::n]} for i in range(n)]


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoints_with_an_index(fmt, tmp_path):
    hf = _gpt2(bos_token_id=0, eos_token_id=0)
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    weight_map = {}
    for i, part in enumerate(_split(state)):
        name = f"model-{i:05d}-of-00003.{fmt}" if fmt == "safetensors" else f"pytorch_model-{i:05d}.bin"
        if fmt == "safetensors":
            save_file(part, tmp_path / name, metadata={"format": "pt"})
        else:
            torch.save(part, tmp_path / name)
        weight_map.update(dict.fromkeys(part, name))
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (tmp_path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ours, _ = load_pretrained(tmp_path)
    _same_logits(ours, hf, 331)


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "/tmp/outside.safetensors", "a/../../x.safetensors"]
)
def test_shard_names_are_confined_to_the_model_folder(shard, tmp_path):
    folder = tmp_path / "model"
    _gpt2(bos_token_id=0, eos_token_id=0).save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    save_file(state, tmp_path / "outside.safetensors")  # exists: only the name keeps it out
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(state, shard)})
    )
    with pytest.raises(UnsupportedCheckpointError, match="lies outside the model folder"):
        load_pretrained(folder)


def test_a_missing_shard_is_named(tmp_path):
    _gpt2(bos_token_id=0, eos_token_id=0).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "sub/shard.safetensors"}})
    )
    with pytest.raises(FileNotFoundError, match=r"shard 'sub/shard\.safetensors' not found"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("build", [_gpt2, _bart], ids=["gpt2", "bart"])
def test_untied_heads_load_and_save_round_trip(build, tmp_path):
    kw = {"bos_token_id": 0, "eos_token_id": 0} if build is _gpt2 else {}
    hf = build(tie_word_embeddings=False, **kw)
    head, emb = hf.get_output_embeddings().weight, hf.get_input_embeddings().weight
    assert not torch.equal(head, emb)
    if build is _bart:  # transformers 5 unties these too; ptft_fast shares one embedding
        with torch.no_grad():
            hf.model.encoder.embed_tokens.weight.copy_(hf.model.shared.weight)
            hf.model.decoder.embed_tokens.weight.copy_(hf.model.shared.weight)
    hf.save_pretrained(tmp_path / "hf")
    ours, config = load_pretrained(tmp_path / "hf")
    assert not config.tie_word_embeddings
    vocab = hf.config.vocab_size
    _same_logits(ours, hf, vocab, seq2seq=build is _bart)
    save_pretrained(ours, tmp_path / "ours")
    again = type(hf).from_pretrained(tmp_path / "ours")
    assert not again.config.tie_word_embeddings
    _same_logits(ours, again, vocab, seq2seq=build is _bart)


@pytest.mark.parametrize("build", [_bert, _bart], ids=["bert", "bart"])
def test_untied_tensors_ptft_fast_ties_are_refused_unless_equal(build, tmp_path):
    """transformers 5 unties BERT's MLM decoder and BART's encoder/decoder embeddings with
    tie_word_embeddings=false; ptft_fast ties them, so it loads such a checkpoint only when the
    tensors are equal anyway."""
    hf = build(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path / "untied")
    key = "cls.predictions.decoder.weight" if build is _bert else "model.encoder.embed_tokens.weight"
    with pytest.raises(UnsupportedCheckpointError, match=rf"tie_word_embeddings=false with its own {key}"):
        load_pretrained(tmp_path / "untied")
    with torch.no_grad():
        if build is _bert:
            hf.cls.predictions.decoder.weight.copy_(hf.bert.embeddings.word_embeddings.weight)
        else:
            hf.model.encoder.embed_tokens.weight.copy_(hf.model.shared.weight)
            hf.model.decoder.embed_tokens.weight.copy_(hf.model.shared.weight)
    hf.save_pretrained(tmp_path / "equal")
    ours, _ = load_pretrained(tmp_path / "equal")
    _same_logits(ours, hf, 99, seq2seq=build is _bart)


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_config_dtype(key, tmp_path):
    hf = _gpt2(bos_token_id=0, eos_token_id=0).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = cfg.pop("dtype")  # older files say torch_dtype
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="config dtype=bfloat16; loaded in float32"):
        ours, _ = load_pretrained(tmp_path)
    assert {p.dtype for p in ours.parameters()} == {torch.float32}
    auto, _ = load_pretrained(tmp_path, dtype="auto")
    assert {p.dtype for p in auto.parameters()} == {
        transformers.GPT2LMHeadModel.from_pretrained(tmp_path).dtype
    }
    assert auto.embed_tokens.weight.dtype == torch.bfloat16
    _edit_config(tmp_path, **{key: "int8"})
    with pytest.raises(UnsupportedCheckpointError, match="config dtype='int8' is not a floating-point"):
        load_pretrained(tmp_path, dtype="auto")


def test_a_tensor_of_the_wrong_shape_is_one_line_naming_it(tmp_path):
    _gpt2(bos_token_id=0, eos_token_id=0).save_pretrained(tmp_path)
    _edit_config(tmp_path, vocab_size=330)
    with pytest.raises(UnsupportedCheckpointError) as err:
        load_pretrained(tmp_path)
    assert str(err.value).count("\n") == 0
    assert "transformer.wte.weight has shape (331, 32), the config implies (330, 32)" in str(err.value)


def test_a_prefix_lm_keeps_its_flag_through_save_and_load(tmp_path):
    """config.json records a GPT-2 trained as a prefix LM (transformers keeps the key and ignores
    it); loading it back gives a prefix LM, a plain GPT-2 folder a causal LM."""
    from ptft_fast.models import from_name

    save_pretrained(from_name("gpt-tiny", prefix_lm=True), tmp_path / "prefix")
    save_pretrained(from_name("gpt-tiny"), tmp_path / "causal")
    assert json.loads((tmp_path / "prefix" / "config.json").read_text())["prefix_lm"] is True
    assert "prefix_lm" not in json.loads((tmp_path / "causal" / "config.json").read_text())
    assert load_pretrained(tmp_path / "prefix")[1].prefix_lm
    assert not load_pretrained(tmp_path / "causal")[1].prefix_lm
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "prefix")
    assert hf.config.prefix_lm is True

"""Tokenizer training per family, special tokens, save/load, HF directories, batch encoding."""

import numpy as np
import pytest
import torch
from installed import import_or_skip
from tokenizers import Tokenizer

from ptft_fast.data.tokenizer import PtftTokenizer

TEXT = "The assert statement is a convenient way to insert debugging assertions."


def test_wordpiece_specials_and_pair_layout(wordpiece):
    tok = wordpiece
    assert tok.kind == "wordpiece" and tok.vocab_size == 2000
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
    b = tok(["hello there", TEXT], ["second part", "b"], return_tensors="pt")
    ids, tt, am = b["input_ids"], b["token_type_ids"], b["attention_mask"]
    assert ids.dtype == torch.long and ids.shape == tt.shape == am.shape
    row = ids[0][am[0].bool()].tolist()
    a = tok.encode("hello there")
    bb = tok.encode("second part")
    assert row == [tok.cls_id, *a, tok.sep_id, *bb, tok.sep_id]
    assert tt[0][am[0].bool()].tolist() == [0] * (len(a) + 2) + [1] * (len(bb) + 1)
    assert (ids[0][~am[0].bool()] == tok.pad_id).all()


def test_bpe_is_byte_level_and_lossless(bpe):
    tok = bpe
    assert [tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id] == [0, 1, 2, 3, 4]
    text = "Ünïcödé — emoji 🙂 and tabs\tkept"
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    enc = tok(text, return_tensors=None)["input_ids"][0]
    assert enc[0] == tok.bos_id and enc[-1] == tok.eos_id


def test_unigram_t5_specials_and_sentinels(unigram):
    tok = unigram
    assert [tok.pad_id, tok.eos_id, tok.unk_id] == [0, 1, 2]
    assert len(tok.sentinel_ids) == 20
    # <extra_id_0> has the highest id; ids decrease with the sentinel index
    assert tok.sentinel_ids[0] == tok.vocab_size - 1
    assert tok.sentinel_ids == list(range(tok.vocab_size - 1, tok.vocab_size - 21, -1))
    assert set(tok.sentinel_ids) <= set(tok.special_ids)
    ids = tok(TEXT, return_tensors=None)["input_ids"][0]
    assert ids[-1] == tok.eos_id
    assert tok.decode(ids) == TEXT


@pytest.mark.parametrize("name", ["wordpiece", "bpe", "unigram"])
def test_save_load_round_trip(name, request, tmp_path):
    tok = request.getfixturevalue(name)
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    again = PtftTokenizer.from_file(tmp_path)
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert again.special_ids == tok.special_ids and again.sentinel_ids == tok.sentinel_ids
    assert again.decode(again.encode(TEXT)).lower() == TEXT.lower()


def test_loads_hf_tokenizer_directory_and_matches_transformers(wordpiece, tmp_path):
    transformers = import_or_skip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=wordpiece.backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    hf.save_pretrained(tmp_path)
    ours = PtftTokenizer.from_file(tmp_path)
    texts, pairs = [TEXT, "short one"], ["a pair", "another longer second segment"]
    mine = ours(texts, pairs, truncation=True, max_length=12, padding="max_length", return_tensors="np")
    ref = hf(
        texts,
        pairs,
        truncation=True,
        max_length=12,
        padding="max_length",
        return_tensors="np",
        return_token_type_ids=True,
    )
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(mine[key], ref[key])


def test_hf_special_tokens_map_names_the_roles(bpe, tmp_path):
    transformers = import_or_skip("transformers")
    backend = Tokenizer.from_str(bpe.backend.to_str())
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, mask_token="<blank>", pad_token="<pad>"
    )
    hf.save_pretrained(tmp_path)
    ours = PtftTokenizer.from_file(tmp_path)
    blank = ours.backend.token_to_id("<blank>")
    assert blank is not None and ours.mask_id == blank != bpe.mask_id
    assert blank in ours.special_ids and ours.pad_id == bpe.pad_id
    with pytest.raises(ValueError, match="not in the vocabulary"):
        PtftTokenizer(backend, {"mask": "<nope>"})


def test_saved_padding_and_truncation_do_not_leak_into_encode(wordpiece):
    backend = Tokenizer.from_str(wordpiece.backend.to_str())
    backend.enable_truncation(4)
    backend.enable_padding(length=64)
    tok = PtftTokenizer(Tokenizer.from_str(backend.to_str()))
    assert tok.encode(TEXT) == wordpiece.encode(TEXT)
    assert len(tok.encode(TEXT)) > 4


def test_padding_truncation_options(wordpiece):
    out = wordpiece([TEXT, "hi"], padding="max_length", truncation=True, max_length=8)
    assert out["input_ids"].shape == (2, 8)
    assert out["input_ids"][0, -1].item() == wordpiece.sep_id  # truncation keeps the template
    ragged = wordpiece([TEXT, "hi"], padding=False, return_tensors=None)
    assert len(ragged["input_ids"][0]) > len(ragged["input_ids"][1])
    with pytest.raises(ValueError, match="max_length"):
        wordpiece([TEXT], truncation=True)
    with pytest.raises(ValueError, match="text_pairs"):
        wordpiece([TEXT], ["a", "b"])


def test_word_start_table(wordpiece, bpe):
    ws = wordpiece.word_start_table()
    vocab = wordpiece.backend.get_vocab()
    # [UNK] can stand inside a word (it is never a word start); every other token: "##" = continuation
    assert all(ws[i] == (not t.startswith("##") and i != wordpiece.unk_id) for t, i in vocab.items())
    wsb = bpe.word_start_table()
    assert wsb[bpe.backend.token_to_id("Ġthe")]
    assert wordpiece.special_mask_table()[[0, 1, 2, 3, 4]].all()

"""A run folder's cached data knows what it was made from: another corpus or tokenizer size
rebuilds it (fresh run) or is refused (resumed run), naming the setting; the same settings reuse it."""

import json
import warnings

import pytest

from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import RunDataError, prepare_run_data
from ptft_fast.train.data_key import KEY_FILE

TEXT = "\n\n".join(
    f"Document {i} talks about apples, pears and the orchard number {i} in plain words." for i in range(40)
)


def test_same_settings_reuse_the_cache(new_run):
    out = new_run()
    tok_file = out / "data" / "train" / "tokenizer.json"
    before = tok_file.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rebuilding" warning
        data = prepare_run_data(TrainConfig(), "wordpiece", out)
    assert tok_file.stat().st_mtime_ns == before
    assert data.tokenizer.vocab_size == TrainConfig().vocab_size


def test_another_vocab_size_rebuilds_naming_it(new_run):
    out = new_run()
    with pytest.warns(UserWarning, match=r"tokenizer\.vocab_size: cached 1024, now 600"):
        data = prepare_run_data(TrainConfig(vocab_size=600), "wordpiece", out)
    assert data.tokenizer.vocab_size == 600
    assert json.loads((out / "data" / KEY_FILE).read_text())["tokenizer"]["vocab_size"] == 600


def test_another_corpus_rebuilds_from_it(new_run, tmp_path):
    out = new_run()
    corpus = tmp_path / "orchard.txt"
    corpus.write_text(TEXT)
    with pytest.warns(
        UserWarning, match=r"data: .*orchard\.txt \(the cache was built from the embedded corpus\)"
    ):
        data = prepare_run_data(TrainConfig(data=str(corpus)), "wordpiece", out)
    assert data.train.num_docs + data.eval.num_docs == 40
    assert "orchard" in data.tokenizer.backend.get_vocab()
    # the same path with other bytes is another corpus too
    corpus.write_text(TEXT.replace("apples", "plums"))
    with pytest.warns(UserWarning, match=r"orchard\.txt \(its content changed since\)"):
        data = prepare_run_data(TrainConfig(data=str(corpus)), "wordpiece", out)
    assert "plums" in data.tokenizer.backend.get_vocab()


def test_resuming_on_other_data_settings_is_refused(new_run):
    out = new_run()
    with pytest.raises(RunDataError, match=r"cannot resume .*tokenizer\.vocab_size: cached 1024, now 600"):
        prepare_run_data(TrainConfig(vocab_size=600), "wordpiece", out, resuming=True)
    assert json.loads((out / "data" / KEY_FILE).read_text())["tokenizer"]["vocab_size"] == 1024


def test_non_utf8_corpus_is_named_not_skipped_silently(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e, a dessert of custard\n".encode("latin-1") * 3)
    with pytest.raises(
        RunDataError, match=r"no documents left, 3 line\(s\) skipped \(first: .*latin1\.txt:1: invalid UTF-8"
    ):
        prepare_run_data(TrainConfig(data=str(bad)), "wordpiece", tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()

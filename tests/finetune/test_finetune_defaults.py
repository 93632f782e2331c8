"""Fine-tuning defaults from the model and the data; column detection; --init random."""

import pytest

from ptft_fast.finetune import defaults
from ptft_fast.finetune.readers import DataError, detect_columns


def test_recipe_scales_with_width_and_labeled_examples():
    tiny, base = defaults.choose_recipe(128, 670), defaults.choose_recipe(768, 670)
    assert tiny.lr == pytest.approx(1e-3) and base.lr == pytest.approx(1e-3 / 36)  # (128 / width)²
    assert defaults.choose_recipe(16, 670).lr == defaults.LR_RANGE[1]  # clipped
    assert defaults.choose_recipe(128, 670, peft="lora").lr == pytest.approx(1e-2)
    assert defaults.choose_recipe(768, 670, peft="lora").lr == pytest.approx(1e-2 / 36)
    assert (tiny.batch_size, tiny.epochs) == (16, 10)  # 42 steps per epoch → >= 400 steps
    small = defaults.choose_recipe(128, 30)
    assert small.batch_size == 8 and small.epochs == 100  # 4 steps per epoch, capped at 100 epochs
    big = defaults.choose_recipe(768, 100_000)
    assert (big.batch_size, big.epochs) == (32, 3)
    given = defaults.choose_recipe(128, 670, lr=1e-4, epochs=2)
    assert (given.lr, given.epochs, given.chosen) == (1e-4, 2, ("batch_size",))
    line = given.describe(128, 670)
    assert "batch size 16 (670 labeled examples)" in line and "given: lr, epochs" in line
    with pytest.raises(ValueError, match="num_examples"):
        defaults.choose_recipe(128, 0)


def test_pooling_default_by_family():
    assert defaults.default_pooling("bert") == defaults.default_pooling("roberta") == "mean"
    assert defaults.default_pooling("gpt2") == defaults.default_pooling("bart") == "auto"


def _write(tmp_path, name, header, rows):
    path = tmp_path / name
    path.write_text("\n".join(["\t".join(header), *["\t".join(r) for r in rows]]) + "\n")
    return path


def test_columns_are_detected_when_unambiguous(tmp_path):
    p = _write(tmp_path, "a.tsv", ["id", "review", "category"], [["1", "good", "pos"]])
    cols, said = detect_columns(p)
    assert (cols.text, cols.text_pair, cols.label) == ("review", None, "category")
    assert said == ["label column 'category'", "text column 'review'"]
    p = _write(tmp_path, "b.tsv", ["premise", "hypothesis", "label"], [["a", "b", "entailment"]])
    cols, _ = detect_columns(p)
    assert (cols.text, cols.text_pair, cols.label) == ("premise", "hypothesis", "label")
    p = _write(tmp_path, "c.tsv", ["words", "label"], [["a b", "x"]])
    assert detect_columns(p)[0].text == "words"  # the only column left
    cols, said = detect_columns(p, text="words", label="label")
    assert said == []
    p = _write(tmp_path, "d.tsv", ["title", "abstract", "label"], [["a", "b", "x"]])
    with pytest.raises(DataError, match=r"which of the columns \['title', 'abstract'\].*--text-column"):
        detect_columns(p)
    # no known label name: with the text column known, the one column left is the label (a user's
    # `body` + `package` file was refused before); with two left, or the text unknown too, it is not
    p = _write(tmp_path, "e.tsv", ["id", "body", "package", "doc_id"], [["1", "a", "x", "7"]])
    cols, said = detect_columns(p)
    assert (cols.text, cols.text_pair, cols.label) == ("body", None, "package")
    assert said == ["text column 'body'", "label column 'package' (the only column left besides the text)"]
    assert detect_columns(p, text="body")[0].label == "package"
    assert detect_columns(p, label="body")[0].text == "package"  # given roles are kept as given
    p = _write(tmp_path, "f.tsv", ["text", "topic", "source"], [["a", "x", "y"]])
    with pytest.raises(DataError, match=r"no label column among .*\['topic', 'source'\].*--label-column"):
        detect_columns(p)
    assert detect_columns(p, label="topic")[0].text == "text"
    p = _write(tmp_path, "g.tsv", ["words", "topic"], [["a", "x"]])
    with pytest.raises(DataError, match=r"among \['words', 'topic'\].*--text-column and --label-column"):
        detect_columns(p)
    p = _write(tmp_path, "h.tsv", ["text"], [["a"]])
    with pytest.raises(DataError, match=r"no label column among \['text'\].*--label-column"):
        detect_columns(p)

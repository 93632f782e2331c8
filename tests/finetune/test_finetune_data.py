"""Readers (errors name file and line), metrics (hand-computed values), QA features/decoding."""

from __future__ import annotations

import json

import pytest
import torch

from ptft_fast.finetune.encode import decode_spans, encode_tokens, qa_features
from ptft_fast.finetune.metrics import (
    accuracy,
    f1_scores,
    matthews_corrcoef,
    pearson,
    spearman,
    squad_em_f1,
)
from ptft_fast.finetune.readers import Columns, DataError, QAExample, read_conll, read_examples, read_squad
from ptft_fast.models.heads import IGNORE_INDEX


def test_tsv_csv_jsonl_with_column_mapping(tmp_path):
    (tmp_path / "a.tsv").write_text("q\tp\ty\nhello there\tgeneral\tpos\nbye\tnow\tneg\n")
    ex = read_examples(tmp_path / "a.tsv", Columns("q", "p", "y"), label_set=["pos", "neg"])
    assert [(e.text, e.text_pair, e.label) for e in ex] == [
        ("hello there", "general", "pos"),
        ("bye", "now", "neg"),
    ]
    (tmp_path / "b.csv").write_text('s,score\n"a, b",0.5\nc,1\n')
    ex = read_examples(tmp_path / "b.csv", Columns("s", None, "score"), regression=True)
    assert [e.label for e in ex] == [0.5, 1.0] and ex[0].text == "a, b"
    (tmp_path / "c.jsonl").write_text('{"sentence": "x y", "label": 1}\n')
    assert read_examples(tmp_path / "c.jsonl")[0].label == "1"


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("m.tsv", "sentence\tlabel\nok\tpos\nfine\tmaybe\n", r"m.tsv:3: label 'maybe' not in the label set"),
        ("n.tsv", "text\tlabel\nok\tpos\n", r"n.tsv:2: missing column 'sentence'"),
        ("e.jsonl", '{"sentence": "a", "label": "pos"}\n\n', r"e.jsonl:2: empty line"),
        ("j.jsonl", '{"sentence": "a", "label": "pos"}\n{bad\n', r"j.jsonl:2: invalid JSON"),
        ("r.csv", "sentence,label\na,high\n", r"r.csv:2: label 'high' is not a number"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_examples(tmp_path / name, label_set=["pos", "neg"], regression=name.startswith("r"))


def test_conll_and_squad(tmp_path):
    (tmp_path / "t.conll").write_text("-DOCSTART- O\n\nJohn NNP B-PER\nlives VBZ O\n\nParis NNP B-LOC\n")
    ex = read_conll(tmp_path / "t.conll")
    assert [e.words for e in ex] == [["John", "lives"], ["Paris"]] and ex[0].tags == ["B-PER", "O"]
    (tmp_path / "bad.conll").write_text("John B-PER\nlives\n")
    with pytest.raises(DataError, match=r"bad.conll:2: expected a token and a tag"):
        read_conll(tmp_path / "bad.conll")
    ctx = "The cat sat on the mat."
    data = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": ctx,
                        "qas": [
                            {
                                "id": "1",
                                "question": "Where?",
                                "answers": [{"text": "the mat", "answer_start": 15}],
                            }
                        ],
                    }
                ]
            }
        ]
    }
    (tmp_path / "s.json").write_text(json.dumps(data))
    assert read_squad(tmp_path / "s.json")[0].answers[0]["text"] == "the mat"
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    (tmp_path / "s2.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"qas\[0\]: answer 'the mat' is not at answer_start=3"):
        read_squad(tmp_path / "s2.json")


def test_metrics_hand_values():
    pred, gold = [0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 1]
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    f = f1_scores(pred, gold)
    # per-class F1: c0 = 1, c1 = 2·1/(2+1+1) = 0.5, c2 = 2·2/(4+1+1) = 2/3
    assert f["macro_f1"] == pytest.approx((1 + 0.5 + 2 / 3) / 3) and f["micro_f1"] == pytest.approx(4 / 6)
    # binary MCC = (TP·TN − FP·FN) / sqrt(...): TP=2, TN=1, FP=1, FN=1 → (2−1)/sqrt(3·3·2·2) = 1/6
    assert matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(1 / 6)
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    torch.testing.assert_close(
        pearson(x, y), float(torch.corrcoef(torch.tensor([x, y]))[0, 1]), atol=1e-6, rtol=0
    )
    assert spearman(x, y) == pytest.approx(0.8) and spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    s = squad_em_f1(["The Mat", "on mat"], [["the mat."], ["the mat"]])
    assert s["exact_match"] == 50.0 and s["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_first_subword_labels(ft_wordpiece):
    from ptft_fast.finetune.readers import TokenExample

    ex = [TokenExample(["Unbelievably", "long", "words"], ["B", "O", "I"])]
    batch = encode_tokens(ft_wordpiece, ex, 32, {"B": 0, "O": 1, "I": 2})
    enc = ft_wordpiece.backend.encode(ex[0].words, is_pretokenized=True)
    labels = batch["labels"][0].tolist()
    firsts = [i for i, w in enumerate(enc.word_ids) if w is not None and (i == 0 or enc.word_ids[i - 1] != w)]
    assert [labels[i] for i in firsts] == [0, 1, 2]
    assert all(labels[i] == IGNORE_INDEX for i in range(len(labels)) if i not in firsts)
    assert len(enc.word_ids) > 5  # "Unbelievably" splits into several sub-words


def test_qa_doc_stride_and_nbest(ft_wordpiece):
    ctx = (
        " ".join(f"word{i}" for i in range(60))
        + " the answer is here "
        + " ".join(f"tail{i}" for i in range(40))
    )
    start = ctx.index("answer is")
    ex = [QAExample("1", "what is it", ctx, [{"text": "answer is", "answer_start": start}])]
    feats = qa_features(ft_wordpiece, ex, max_length=64, doc_stride=16)
    assert len(feats) > 2  # long context split into overlapping windows
    hits = [f for f in feats if f.start > 0]
    assert hits and all(ctx[f.offsets[f.start][0] : f.offsets[f.end][1]] == "answer is" for f in hits)
    # logits that point at the gold span in one window decode back to the answer text
    logits = [torch.zeros(len(f.input_ids), 2) for f in feats]
    f = hits[0]
    i = feats.index(f)
    logits[i][f.start, 0] = 10.0
    logits[i][f.end, 1] = 10.0
    assert decode_spans(ex, feats, logits) == ["answer is"]
    # an end before the start or a too-long span is never chosen
    logits[i][f.start, 0], logits[i][f.end, 1] = 0.0, 0.0
    logits[i][f.end, 0], logits[i][f.start, 1] = 10.0, 10.0
    assert decode_spans(ex, feats, logits, max_answer_len=1) != ["answer is"]


CONLL = (
    "-DOCSTART- O\n\nJohn B-PER\nreads O\nfiles O\n\nParis B-LOC\nopens O\n\nAnna B-PER\nsaw O\nRome B-LOC\n"
)
TAGS = ["O", "B-PER", "B-LOC"]
CTX = "The open function returns a file object. " * 3
SQUAD = [("q1", "What does open return?", CTX, "a file object", 26),
         ("q2", "Which function?", CTX, "open", 4), ("q3", "What is returned?", CTX, "file object", 28)]  # fmt: skip


def _squad_file(path):
    qas = [{"id": i, "question": q, "answers": [{"text": t, "answer_start": s}]} for i, q, _, t, s in SQUAD]
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": CTX, "qas": qas}]}]}))
    return path


def _conll_dataset(datasets):
    """CoNLL-2003's layout on the hub: tokens + ner_tags as ClassLabel indices."""
    sents = [(["John", "reads", "files"], [1, 0, 0]), (["Paris", "opens"], [2, 0]),
             (["Anna", "saw", "Rome"], [1, 0, 2])]  # fmt: skip
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=TAGS)),
        }
    )
    return datasets.Dataset.from_dict(
        {"tokens": [w for w, _ in sents], "ner_tags": [t for _, t in sents]}, features=features
    )


def _squad_dataset(datasets):
    """SQuAD's layout on the hub: answers as {text: [...], answer_start: [...]}."""
    columns = {"id": [r[0] for r in SQUAD], "question": [r[1] for r in SQUAD], "context": [r[2] for r in SQUAD],
               "answers": [{"text": [r[3]], "answer_start": [r[4]]} for r in SQUAD]}  # fmt: skip
    return datasets.Dataset.from_dict(columns)


def _fields(examples):
    return [{k: v for k, v in vars(e).items() if k != "where"} for e in examples]


def test_conll_and_squad_from_datasets_inputs_read_like_the_files(tmp_path):
    from installed import import_or_skip

    datasets = import_or_skip("datasets")
    (tmp_path / "t.conll").write_text(CONLL)
    want = _fields(read_conll(tmp_path / "t.conll"))
    tok = _conll_dataset(datasets)
    tok.save_to_disk(str(tmp_path / "tok"))
    named = tok.cast_column("ner_tags", datasets.List(datasets.Value("string")))  # tags as names
    named = named.map(lambda r: {"ner_tags": [TAGS[int(t)] for t in r["ner_tags"]]})
    named.to_parquet(str(tmp_path / "tok.parquet"))
    for path in (tmp_path / "tok", tmp_path / "tok.parquet", next((tmp_path / "tok").glob("*.arrow"))):
        assert _fields(read_conll(path)) == want, path
        assert [e.words for e in read_conll(path, with_tags=False)] == [w["words"] for w in want]
    with pytest.raises(DataError, match=r"tok:1: tag 'B-PER' not in the label set \['O', 'B-LOC'\]"):
        read_conll(tmp_path / "tok", label_set=["O", "B-LOC"])
    want = _fields(read_squad(_squad_file(tmp_path / "s.json")))
    qa = _squad_dataset(datasets)
    qa.save_to_disk(str(tmp_path / "qa"))
    qa.to_parquet(str(tmp_path / "qa.parquet"))
    for path in (tmp_path / "qa", tmp_path / "qa.parquet"):
        assert _fields(read_squad(path)) == want, path
    # the errors name the input, the row and the column
    qa.remove_columns("context").to_parquet(str(tmp_path / "noctx.parquet"))
    with pytest.raises(DataError, match=r"noctx.parquet:1: missing text column 'context'"):
        read_squad(tmp_path / "noctx.parquet")
    bad = qa.map(lambda r, i: {"answers": {"text": r["answers"]["text"], "answer_start": [3]}} if i == 1 else {},
                 with_indices=True)  # fmt: skip
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad.parquet:2: answer 'open' is not at answer_start=3"):
        read_squad(tmp_path / "bad.parquet")
    tok.rename_column("tokens", "toks").to_parquet(str(tmp_path / "notok.parquet"))
    with pytest.raises(DataError, match=r"notok.parquet:1: no token column among \['ner_tags', 'toks'\]"):
        read_conll(tmp_path / "notok.parquet")


def test_finetune_tok_and_qa_on_datasets_inputs_score_like_the_files(tmp_path, make_model_dir, ft_wordpiece):
    from installed import import_or_skip

    from ptft_fast.cli import main

    datasets = import_or_skip("datasets")
    base = make_model_dir("bert-tiny-cpu", ft_wordpiece)
    (tmp_path / "t.conll").write_text(CONLL)
    _conll_dataset(datasets).save_to_disk(str(tmp_path / "tok"))
    _squad_file(tmp_path / "s.json")
    _squad_dataset(datasets).to_parquet(str(tmp_path / "qa.parquet"))
    common = ["--max-steps", "3", "--batch-size", "2", "--no-progress", "--no-baselines"]
    cards = {}
    for name, task, data, extra in (
        ("conll", "tok", tmp_path / "t.conll", []),
        ("tok-dataset", "tok", tmp_path / "tok", []),
        ("squad", "qa", tmp_path / "s.json", ["--max-length", "32", "--doc-stride", "8"]),
        ("qa-parquet", "qa", tmp_path / "qa.parquet", ["--max-length", "32", "--doc-stride", "8"]),
    ):
        out = tmp_path / f"o-{name}"
        argv = ["finetune", "--model", str(base), "--task", task, "--train", str(data), "--dev", str(data),
                "--eval", str(data), "--out", str(out), *common, *extra]  # fmt: skip
        assert main(argv) == 0, name
        cards[name] = json.loads((out / "best" / "task.json").read_text())
    for name, ref in (("tok-dataset", "conll"), ("qa-parquet", "squad")):
        for key in ("dev_metrics", "eval_metrics", "labels"):
            assert cards[name][key] == cards[ref][key], (name, key)

"""After fine-tuning: ``ptft predict`` reloads what finetune kept (full model, head on a frozen
base, peft-format LoRA/(IA)³, native adapters/prefix/prompt) onto its base and reproduces the
eval scores finetune recorded; LoRA trained here loads in peft with equal logits; ``ptft merge``
(and ``finetune --merge-lora``) writes a plain folder transformers loads."""

from __future__ import annotations

import json
import re

import pytest
import torch
from installed import import_or_skip

from ptft_fast.cli import main
from ptft_fast.finetune import saved, tasks
from ptft_fast.finetune.metrics import classification_metrics, entity_scores, generation_metrics, squad_em_f1
from ptft_fast.finetune.readers import read_conll, read_examples

transformers = import_or_skip("transformers")
peft = import_or_skip("peft")

TSV = ["sentence\tlabel"] + [f"{w} file path read\tio" for w in ("open", "close", "seek", "tell")]
TSV += [f"{w} json object dump\tjson" for w in ("load", "dump", "parse", "encode")]
CONLL = (
    "John B-PER\nSmith I-PER\nreads O\nfiles O\n\nParis B-LOC\nopens O\n\nMary B-PER\nlikes O\nRome B-LOC\n"
)
RUN = ["--epochs", "2", "--batch-size", "4", "--max-length", "32", "--no-progress"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, ft_wordpiece, ft_bpe):
    """Base model folders and task files shared by this module's runs."""
    from ptft_fast.hf import save_pretrained
    from ptft_fast.models import from_name

    root = tmp_path_factory.mktemp("after")
    for name, tok in (("bert-tiny-cpu", ft_wordpiece), ("gpt-tiny", ft_bpe), ("bart-tiny", ft_bpe)):
        torch.manual_seed(0)
        kw = {
            "vocab_size": tok.vocab_size,
            **({"pad_token_id": tok.pad_id} if tok.pad_id is not None else {}),
        }
        save_pretrained(from_name(name, **kw), root / name)
        tok.save(root / name)
    (root / "train.tsv").write_text("\n".join(TSV) + "\n")
    (root / "t.conll").write_text(CONLL)
    return root


def finetune(work, out, *args):
    rc = main(["finetune", "--out", str(work / out), *RUN, *args])
    assert rc == 0
    return work / out / "best"


def card(best):
    return json.loads((best / "task.json").read_text())


def predict(best, data, out):
    assert main(["predict", "--model", str(best), "--input", str(data), "--out", str(out)]) == 0
    return out


def test_lora_adapter_trained_here_loads_in_peft_with_equal_logits(work, capsys):
    best = finetune(work, "lora", "--model", str(work / "bert-tiny-cpu"), "--task", "cls", "--train",
                    str(work / "train.tsv"), "--eval", str(work / "train.tsv"), "--peft", "lora", "--lr", "5e-3", "--pooling", "auto")  # fmt: skip
    assert card(best)["weights"] == "peft"
    ours = saved.load(best).model
    lora_b = [p for n, p in ours.named_parameters() if n.endswith("lora_B")]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # trained: the update is not zero
    hf = transformers.BertForMaskedLM.from_pretrained(work / "bert-tiny-cpu").eval()
    ref = peft.PeftModel.from_pretrained(hf, best).eval()  # the folder finetune wrote, as is
    ids = torch.randint(5, 200, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        mine = ours.backbone(ids, attention_mask=mask, output_hidden_states=True)
        real = mask.bool()
        torch.testing.assert_close(mine.logits[real], out.logits[real], atol=1e-4, rtol=1e-4)
        # the task head, saved beside the adapter, on peft's hidden states gives our class logits
        cls_logits = ours.head(out.hidden_states[-1][:, 0])
        torch.testing.assert_close(ours(ids, mask)["logits"], cls_logits, atol=1e-4, rtol=1e-4)
        base = transformers.BertForMaskedLM.from_pretrained(work / "bert-tiny-cpu").eval()(
            input_ids=ids, attention_mask=mask
        )
    assert not torch.allclose(base.logits[real], out.logits[real], atol=1e-3)  # peft applied the adapter
    # merge: a plain folder transformers loads, with the adapter's logits
    merged = work / "lora-merged"
    assert main(["merge", "--model", str(best), "--out", str(merged)]) == 0
    assert card(merged)["weights"] == "full" and card(merged)["peft"] == "none"
    plain = transformers.BertForMaskedLM.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids, attention_mask=mask).logits[real], out.logits[real], atol=1e-4, rtol=1e-4
        )
    # and predicts what the adapter predicts
    a = predict(best, work / "train.tsv", work / "p-lora.tsv").read_text()
    b = predict(merged, work / "train.tsv", work / "p-merged.tsv").read_text()
    assert a == b and a.splitlines()[0] == "index\tprediction" and len(a.splitlines()) == 9


def scored_like_finetune(best, predictions, gold_examples):
    """Accuracy of the predicted labels on a labeled file equals finetune's recorded eval accuracy."""
    labels = card(best)["labels"]
    pred = [ln.split("\t")[1] for ln in predictions.read_text().splitlines()[1:]]
    m = classification_metrics(
        [labels.index(p) for p in pred], [labels.index(e.label) for e in gold_examples]
    )
    return m["accuracy"], card(best)["eval_metrics"]["accuracy"]


@pytest.mark.parametrize(
    ("extra", "layout"),
    [
        (["--peft", "none"], "full"),
        (["--freeze-backbone", "--pooling", "scalar-mix"], "head"),
        (["--peft", "ia3", "--merge-lora"], "peft"),
        (["--peft", "adapter"], "native"),
        (["--peft", "prefix"], "native"),
        (["--peft", "prompt", "--prompt-init-text", "classify the module"], "native"),
    ],
    ids=["full", "frozen-scalar-mix", "ia3-merged", "adapter", "prefix", "prompt"],
)
def test_predict_reproduces_the_recorded_eval_score(work, extra, layout, capsys):
    name = "-".join(a.strip("-") for a in extra[:2])
    best = finetune(work, name, "--model", str(work / "bert-tiny-cpu"), "--task", "cls", "--train",
                    str(work / "train.tsv"), "--eval", str(work / "train.tsv"), "--lr", "3e-3", *extra)  # fmt: skip
    assert card(best)["weights"] == layout
    if layout == "head":  # head-only: no backbone written, the base is untouched
        assert not (best / "model.safetensors").exists() and (best / "head.safetensors").is_file()
    examples = read_examples(work / "train.tsv")
    got, recorded = scored_like_finetune(
        best, predict(best, work / "train.tsv", work / f"{name}.tsv"), examples
    )
    assert got == pytest.approx(recorded)
    if "--merge-lora" in extra:
        merged = best.parent / "merged"
        assert (merged / "model.safetensors").is_file() and card(merged)["weights"] == "full"
        got, _ = scored_like_finetune(best, predict(merged, work / "train.tsv", work / "m.tsv"), examples)
        assert got == pytest.approx(recorded)


def test_predict_tok_qa_reg(work, capsys):
    bert = str(work / "bert-tiny-cpu")
    best = finetune(work, "tok", "--model", bert, "--task", "tok", "--train", str(work / "t.conll"),
                    "--eval", str(work / "t.conll"), "--lr", "5e-3")  # fmt: skip
    words = work / "words.conll"  # words only: what predict reads
    words.write_text("\n".join(ln.split()[0] if ln else "" for ln in CONLL.splitlines()) + "\n")
    out = predict(best, words, work / "tags.conll")
    pred = read_conll(out)
    gold = read_conll(work / "t.conll")
    assert [e.words for e in pred] == [e.words for e in gold]
    assert entity_scores([e.tags for e in pred], [e.tags for e in gold])["f1"] == pytest.approx(
        card(best)["eval_metrics"]["f1"]
    )
    ctx = "The open function returns a file object. " * 4
    squad = {"data": [{"paragraphs": [{"context": ctx, "qas": [
        {"id": "q1", "question": "What does open return?", "answers": [{"text": "a file object", "answer_start": 26}]},
        {"id": "q2", "question": "Which function?", "answers": [{"text": "open", "answer_start": 4}]}]}]}]}  # fmt: skip
    (work / "s.json").write_text(json.dumps(squad))
    best = finetune(work, "qa", "--model", bert, "--task", "qa", "--train", str(work / "s.json"), "--eval",
                    str(work / "s.json"), "--doc-stride", "8", "--lr", "5e-3")  # fmt: skip
    answers = json.loads(predict(best, work / "s.json", work / "answers.json").read_text())
    assert sorted(answers) == ["q1", "q2"]
    f1 = squad_em_f1([answers["q1"], answers["q2"]], [["a file object"], ["open"]])["f1"]
    assert f1 == pytest.approx(card(best)["eval_metrics"]["f1"])
    (work / "r.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{w} value\t{i / 2}\n" for i, w in enumerate("abcdef"))
    )
    best = finetune(
        work,
        "reg",
        "--model",
        bert,
        "--task",
        "reg",
        "--train",
        str(work / "r.tsv"),
        "--eval",
        str(work / "r.tsv"),
    )
    values = [
        float(ln.split("\t")[1])
        for ln in predict(best, work / "r.tsv", work / "r.out").read_text().splitlines()[1:]
    ]
    assert tasks.score_reg(values, [i / 2 for i in range(6)])["pearson"] == pytest.approx(
        card(best)["eval_metrics"]["pearson"], abs=1e-5
    )


RECORDS = [("Name a module for paths.", "pathlib"), ("What does json do?", "It encodes JSON."),
           ("Say hi.", "hi"), ("List two numbers.", "one two")]  # fmt: skip


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prefix_and_prompt_tuning_for_instruct_and_seq2seq(work, method, capsys):
    data = work / "records.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in RECORDS))
    best = finetune(work, f"inst-{method}", "--model", str(work / "gpt-tiny"), "--task", "instruct", "--train",
                    str(data), "--dev", str(data), "--eval", str(data), "--peft", method, "--lr", "1e-2",
                    "--epochs", "3")  # fmt: skip
    text = capsys.readouterr().out
    # "epoch N: train_loss=...  dev loss=..." per epoch: the dev loss on the training records
    losses = [float(m) for m in re.findall(r"^epoch \d+: .*\bdev loss=([0-9.]+)", text, flags=re.M)]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the prefix / prompt learns the responses
    gen = predict(best, data, work / f"gen-{method}.jsonl").read_text().splitlines()
    assert len(gen) == 4 and all("prediction" in json.loads(ln) for ln in gen)
    s2s = finetune(work, f"s2s-{method}", "--model", str(work / "bart-tiny"), "--task", "seq2seq", "--train",
                   str(work / "train.tsv"), "--eval", str(work / "train.tsv"), "--peft", method, "--lr", "1e-2")  # fmt: skip
    from safetensors.torch import load_file

    trained = load_file(s2s / "adapter_model.safetensors")
    assert trained and all(("prefix_" if method == "prefix" else "soft_prompt") in k for k in trained)
    out = [
        json.loads(ln)["prediction"]
        for ln in predict(s2s, work / "train.tsv", work / f"s2s-{method}.jsonl").read_text().splitlines()
    ]
    golds = [e.label for e in read_examples(work / "train.tsv")]
    assert generation_metrics(out, golds)["rouge_l"] == pytest.approx(card(s2s)["eval_metrics"]["rouge_l"])


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["finetune", "--task", "cls", "--peft", "lora", "--freeze-backbone"],
            ["--freeze-backbone", "--peft lora"],
        ),
        (["finetune", "--task", "seq2seq", "--pooling", "scalar-mix"], ["scalar-mix", "seq2seq"]),
        (["finetune", "--glue", "mnli"], ["--eval-mismatched"]),
        (
            ["finetune", "--task", "cls", "--eval-mismatched", "{train}"],
            ["--eval-mismatched is for --glue mnli"],
        ),
        (["finetune", "--task", "cls", "--merge-lora"], ["--merge-lora", "--peft none"]),
        (["finetune", "--glue", "stsb", "--task", "cls"], ["--glue stsb is a reg task"]),
        (["finetune"], ["--task is required"]),
        (["predict", "--model", "{bert}", "--input", "{train}", "--out", "{new}"], ["no task.json"]),
        (
            ["predict", "--model", "{full}", "--input", "{nofile}", "--out", "{new}"],
            ["--input", "does not exist"],
        ),
        (["merge", "--model", "{full}", "--out", "{new}"], ["--peft none has nothing to merge"]),
        (["glue", "{full}"], ["not a GLUE fine-tune"]),
    ],
)
def test_user_mistakes_are_one_line(work, tmp_path, argv, words, capsys):
    if not (work / "full" / "best").is_dir():
        finetune(work, "full", "--model", str(work / "bert-tiny-cpu"), "--task", "cls", "--train",
                 str(work / "train.tsv"), "--eval", str(work / "train.tsv"), "--epochs", "1")  # fmt: skip
    subs = {"{train}": str(work / "train.tsv"), "{bert}": str(work / "bert-tiny-cpu"), "{new}": str(tmp_path / "new"),
            "{full}": str(work / "full" / "best"), "{nofile}": str(tmp_path / "none.tsv")}  # fmt: skip
    argv = [subs.get(a, a) for a in argv]
    if argv[0] == "finetune":
        argv += [
            "--model",
            subs["{bert}"],
            "--train",
            subs["{train}"],
            "--eval",
            subs["{train}"],
            "--out",
            subs["{new}"],
        ]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ptft {argv[0]}: error: "), err
    assert all(w in err[0] for w in words), err
    assert not (tmp_path / "new").exists()


def test_predict_reads_a_datasets_folder_like_the_file(work, capsys):
    datasets = import_or_skip("datasets")
    best = finetune(work, "cls-ds", "--model", str(work / "bert-tiny-cpu"), "--task", "cls", "--train",
                    str(work / "train.tsv"), "--eval", str(work / "train.tsv"), "--lr", "3e-3")  # fmt: skip
    rows = [line.split("\t") for line in TSV[1:]]
    folder = work / "unlabeled_ds"
    datasets.Dataset.from_dict({"sentence": [r[0] for r in rows]}).save_to_disk(str(folder))
    from_file = predict(best, work / "train.tsv", work / "file.tsv").read_text()
    from_folder = predict(best, folder, work / "folder.tsv").read_text()
    assert from_folder == from_file and len(from_file.splitlines()) == len(rows) + 1
    assert main(["predict", "--model", str(best), "--input", str(work), "--out", str(work / "x.tsv")]) == 2
    assert "is not a file" in capsys.readouterr().err

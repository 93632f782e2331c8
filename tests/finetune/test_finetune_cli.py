"""``ptft finetune`` / ``ptft generate`` / ``ptft icl`` end to end on tiny model directories."""

from __future__ import annotations

import json

import pytest
import torch

from ptft_fast.cli import main
from ptft_fast.hf import save_pretrained
from ptft_fast.models import from_name


def model_dir(tmp_path, name, tokenizer):
    torch.manual_seed(0)
    kw = {"vocab_size": tokenizer.vocab_size}
    if tokenizer.pad_id is not None:
        kw["pad_token_id"] = tokenizer.pad_id
    d = tmp_path / name
    save_pretrained(from_name(name, **kw), d)
    tokenizer.save(d)
    return d


@pytest.fixture
def tsv(tmp_path):
    rows = ["sentence\tlabel"] + [f"{w} file path read\tio" for w in ("open", "close", "seek", "tell")]
    rows += [f"{w} json object dump\tjson" for w in ("load", "dump", "parse", "encode")]
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    "peft",
    [pytest.param("none", marks=pytest.mark.slow), "lora", pytest.param("prompt", marks=pytest.mark.slow)],
)
def test_finetune_cli_keeps_best(tmp_path, ft_wordpiece, tsv, peft, capsys):
    d = model_dir(tmp_path, "bert-tiny-cpu", ft_wordpiece)
    out = tmp_path / f"out-{peft}"
    rc = main(["finetune", "--model", str(d), "--task", "cls", "--train", str(tsv), "--eval", str(tsv),
               "--peft", peft, *(["--prompt-init-text", "classify the module"] if peft == "prompt" else []), "--epochs", "2", "--batch-size", "4", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "trainable params" in text and "kept epoch" in text and "eval score of the kept model" in text
    card = json.loads((out / "best" / "task.json").read_text())
    assert card["labels"] == ["io", "json"] and card["peft"] == peft
    if peft == "none":
        assert (out / "best" / "model.safetensors").is_file() and (
            out / "best" / "head.safetensors"
        ).is_file()
    elif peft == "lora":  # peft's format (base_model.model.<transformers module>), the head beside it
        from safetensors.torch import load_file

        saved = load_file(out / "best" / "adapter_model.safetensors")
        assert saved and all(k.startswith("base_model.model.bert.") and ".lora_" in k for k in saved)
        assert any(k.startswith("head.") for k in load_file(out / "best" / "head.safetensors"))
        assert card["weights"] == "peft"
    else:  # ptft_fast's names, the head inside
        from safetensors.torch import load_file

        saved = load_file(out / "best" / "adapter_model.safetensors")
        assert any("head." in k for k in saved) and all("head." in k or "soft_prompt" in k for k in saved)


def test_finetune_cli_eval_only_labels(tmp_path, ft_wordpiece, tsv, capsys):
    """A label seen only in the eval file: a warning and a larger label set; with --labels given,
    a label outside it is an error naming the line."""
    d = model_dir(tmp_path, "bert-tiny-cpu", ft_wordpiece)
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nfine\tio\nodd\tyaml\n")
    args = ["finetune", "--model", str(d), "--task", "cls", "--train", str(tsv), "--eval", str(dev)]
    args += ["--epochs", "1", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(args) == 0  # the CLI shows warnings as "ptft finetune: warning: ..." on stderr
    assert "warning: " in (err := capsys.readouterr().err)
    assert "label(s) ['yaml'] appear only in the eval file (1 examples)" in err
    assert json.loads((tmp_path / "o" / "best" / "task.json").read_text())["labels"] == ["io", "json", "yaml"]
    rc = main([*args, "--labels", "io,json"])
    assert rc == 2
    assert "dev.tsv:3: label 'yaml' not in the label set" in capsys.readouterr().err


def test_finetune_cli_init_random_detected_columns_and_recipe(tmp_path, ft_wordpiece, capsys):
    """--init random trains the same architecture from fresh weights with the same tokenizer;
    columns are detected; the chosen recipe is printed, counted on what is left after the dev split
    (1 of the 4 examples)."""
    d = model_dir(tmp_path, "bert-tiny-cpu", ft_wordpiece)
    data = tmp_path / "train.csv"
    rows = ["id,review,category"] + [f"{i},{w} file path read,io" for i, w in enumerate(("open", "seek"))]
    data.write_text("\n".join(rows + [f"9,{w} json object,json" for w in ("load", "dump")]) + "\n")
    base = ["finetune", "--model", str(d), "--task", "cls", "--train", str(data), "--eval", str(data)]
    assert (
        main([*base, "--init", "random", "--seed", "1", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    )
    text = capsys.readouterr().out
    assert "label column 'category', text column 'review' (detected" in text
    assert "--init random" in text and "pooling: mean (the default for bert" in text
    assert (
        "fine-tuning recipe: lr 0.002 (hidden size 64); batch size 8 (3 labeled examples); 100 epochs" in text
    )
    from safetensors.torch import load_file

    trained = load_file(tmp_path / "r" / "best" / "model.safetensors")
    pretrained = load_file(d / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    # fresh weights (seed 1; model_dir drew seed 0's): not the saved ones after a few small updates
    assert (trained[key] - pretrained[key]).abs().mean() > 0.5 * pretrained[key].abs().mean()
    card = json.loads((tmp_path / "r" / "best" / "task.json").read_text())
    assert card["init"] == "random" and card["pooling"] == "mean"


def test_generate_and_icl_cli(tmp_path, ft_bpe, tsv, capsys):
    d = model_dir(tmp_path, "gpt-tiny", ft_bpe)
    assert main(["generate", "--model", str(d), "--prompt", "The file", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The file")
    rc = main(["generate", "--model", str(d), "--prompt", "a", "--prompt", "The json module", "--max-new-tokens", "4",
               "--beams", "2"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and lines[0].startswith("a") and lines[1].startswith("The json module")
    jl = tmp_path / "task.jsonl"
    jl.write_text(
        "".join(json.dumps({"sentence": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(6))
    )
    assert main(["icl", "--model", str(d), "--task", str(jl), "--shots", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "k=0\taccuracy=" in out and "k=1\taccuracy=" in out


@pytest.mark.slow
def test_finetune_cli_tok_qa_seq2seq(tmp_path, ft_wordpiece, ft_bpe, tsv, capsys):
    bert = model_dir(tmp_path, "bert-tiny-cpu", ft_wordpiece)
    conll = tmp_path / "t.conll"
    conll.write_text("John B-PER\nreads O\nfiles O\n\nParis B-LOC\nopens O\n")
    base = ["--epochs", "1", "--batch-size", "2", "--no-progress"]
    assert main(["finetune", "--model", str(bert), "--task", "tok", "--train", str(conll), "--dev", str(conll), "--eval", str(conll),
                 "--out", str(tmp_path / "tok"), *base]) == 0  # fmt: skip
    ctx = "The open function returns a file object. " * 6
    squad = {"data": [{"paragraphs": [{"context": ctx, "qas": [
        {"id": "1", "question": "What does open return?", "answers": [{"text": "a file object", "answer_start": 26}]}
    ]}]}]}  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(squad))
    assert main(["finetune", "--model", str(bert), "--task", "qa", "--train", str(tmp_path / "s.json"),
                 "--dev", str(tmp_path / "s.json"), "--eval", str(tmp_path / "s.json"), "--max-length", "32", "--doc-stride", "8",
                 "--peft", "ia3", "--out", str(tmp_path / "qa"), *base]) == 0  # fmt: skip
    bart = model_dir(tmp_path, "bart-tiny", ft_bpe)
    assert main(["finetune", "--model", str(bart), "--task", "seq2seq", "--train", str(tsv), "--eval", str(tsv),
                 "--peft", "lora", "--out", str(tmp_path / "s2s"), *base]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "accuracy=" in out and "exact_match=" in out and "rouge_l=" in out
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "s2s" / "best" / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # PEFT applies to seq2seq too (base frozen)


def _records(path, rows):
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))
    return path


RECORDS = [("Name a module for paths.", "pathlib"), ("What does json do?", "It encodes JSON."),
           ("Say hi.", "hi"), ("List two numbers.", "one two"), ("Open a file.", "open(path)")]  # fmt: skip


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_finetune_cli_instruct_gpt(tmp_path, ft_bpe, peft, capsys):
    gpt = model_dir(tmp_path, "gpt-tiny", ft_bpe)
    data = _records(tmp_path / "r.jsonl", RECORDS)
    out = tmp_path / "inst"
    assert main(["finetune", "--model", str(gpt), "--task", "instruct", "--train", str(data), "--dev", str(data),
                 "--eval", str(data), "--peft", peft, "--epochs", "3", "--batch-size", "2", "--lr", "3e-3", "--max-length", "48",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    losses = [float(w.split("=")[1]) for ln in rows for w in ln.split() if w.startswith("loss=")]
    assert len(losses) == 3 and losses[-1] < losses[0]  # dev response loss falls on the training records
    card = json.loads((out / "best" / "task.json").read_text())
    assert card["task"] == "instruct" and card["dev_metrics"]["loss"] == pytest.approx(min(losses), abs=1e-4)
    # --eval is the same file: the kept model's eval loss is its dev loss
    assert card["eval_metrics"]["loss"] == pytest.approx(min(losses), abs=1e-4)
    if peft == "lora":
        from safetensors.torch import load_file

        assert all("lora_" in k for k in load_file(out / "best" / "adapter_model.safetensors"))


def test_finetune_cli_instruct_errors(tmp_path, ft_bpe, capsys):
    gpt = model_dir(tmp_path, "gpt-tiny", ft_bpe)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    args = ["finetune", "--model", str(gpt), "--task", "instruct", "--eval", str(bad), "--no-progress"]
    assert main([*args, "--train", str(bad)]) == 2
    assert "bad.jsonl:2: empty or missing response column 'response'" in capsys.readouterr().err
    good = _records(tmp_path / "r.jsonl", RECORDS[:2])
    rc = main(
        [*args[:-3], "--eval", str(good), "--train", str(good), "--template", "no slot", "--no-progress"]
    )
    assert rc == 2 and "--template must contain {prompt}" in capsys.readouterr().err

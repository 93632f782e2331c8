"""The CLI's error contract, swept over every subcommand: a user mistake ends with exit code 2 and
one line ``ptft <cmd>: error: ...`` that names the option or file and the value; no traceback;
an output folder the command would have created is not left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptft_fast.cli import main
from ptft_fast.data.corpus import embedded_corpus
from ptft_fast.data.tokenizer import TokenizerConfig, train_tokenizer
from ptft_fast.hf import save_pretrained
from ptft_fast.models import from_name


def _model_dir(path: Path, preset: str, tok) -> Path:
    torch.manual_seed(0)
    kw = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id)
    if preset.startswith("gpt"):
        kw.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    save_pretrained(from_name(preset, **kw), path)
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Path:
    """Files every case refers to as ``{name}`` (see CASES)."""
    root = tmp_path_factory.mktemp("cli-errors")
    texts = embedded_corpus()[:30]
    wordpiece = train_tokenizer(texts, TokenizerConfig(kind="wordpiece", vocab_size=400))
    bpe = train_tokenizer(texts, TokenizerConfig(kind="bpe", vocab_size=400))
    _model_dir(root / "bert", "bert-tiny-cpu", wordpiece)
    _model_dir(root / "gpt", "gpt-tiny", bpe)
    for name, src in (("broken", "bert"), ("broken-gpt", "gpt")):
        _model_dir(
            root / name, "bert-tiny-cpu" if src == "bert" else "gpt-tiny", wordpiece if src == "bert" else bpe
        )
        weights = root / name / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    _model_dir(root / "notok", "bert-tiny-cpu", wordpiece)
    (root / "notok" / "tokenizer.json").unlink()
    rows = [f"{w} file path read\tio" for w in ("open", "close", "seek", "tell")]
    rows += [f"{w} json object dump\tjson" for w in ("load", "dump", "parse", "encode")]
    (root / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (root / "nolabel.tsv").write_text("sentence\n" + "\n".join(r.split("\t")[0] for r in rows) + "\n")
    (root / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9 au lait\tio\n".encode("latin-1"))
    (root / "data.xml").write_text("<rows/>\n")
    records = [
        {"sentence": f"{w} the file", "label": "io" if i % 2 else "json"}
        for i, w in enumerate("abcdefgh" * 5)
    ]
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "nolabel.jsonl").write_text(
        "".join(json.dumps({"sentence": r["sentence"]}) + "\n" for r in records)
    )
    (root / "instruct.jsonl").write_text(json.dumps({"prompt": "say hi", "response": "hi"}) + "\n")
    (root / "afile").write_text("not a folder\n")
    (root / "emptydir").mkdir()
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e and more words\n".encode("latin-1") * 3)
    (root / "bad.yaml").write_text("max_steps: [1, 2\nlr: 0.1\n")
    (root / "list.yaml").write_text("- max_steps\n- lr\n")
    (root / "typo.yaml").write_text("max_stepz: 3\n")
    (root / "notjson.json").write_text("{ this is not json\n")
    return root


FT = ["finetune", "--model", "{bert}", "--task", "cls", "--train", "{train.tsv}", "--eval", "{train.tsv}"]
FT += ["--out", "{new}", "--no-progress"]
GEN = ["generate", "--model", "{gpt}", "--prompt", "The file"]
ICL = ["icl", "--model", "{gpt}", "--task", "{task.jsonl}"]
PT = ["pretrain", "--out", "{new}", "--no-progress"]
PREP = ["prepare", "--embedded", "--out", "{new}", "--no-progress"]

# (id, argv, words the line must contain). "{name}" is a file of env; "{new}" a fresh path that
# must not exist afterwards.
CASES = [
    # ---- pretrain
    (
        "pt-config-missing",
        [*PT, "--config", "{missing.yaml}"],
        ["--config", "missing.yaml", "does not exist"],
    ),
    ("pt-config-malformed-yaml", [*PT, "--config", "{bad.yaml}"], ["bad.yaml", "not valid YAML at line"]),
    ("pt-config-not-a-mapping", [*PT, "--config", "{list.yaml}"], ["list.yaml", "mapping"]),
    ("pt-config-unknown-key", [*PT, "--config", "{typo.yaml}"], ["max_stepz", "typo.yaml"]),
    ("pt-set-without-equals", [*PT, "--set", "max_steps"], ["--set", "'max_steps'"]),
    ("pt-set-unknown-key", [*PT, "--set", "nope=1"], ["nope"]),
    ("pt-set-not-a-number", [*PT, "--set", "max_steps=abc"], ["max_steps", "'abc'"]),
    ("pt-max-steps-negative", [*PT, "--set", "max_steps=-1"], ["max_steps", "-1"]),  # 0 = auto
    ("pt-lr-negative", [*PT, "--set", "lr=-1"], ["lr", "-1"]),
    ("pt-precision", [*PT, "--set", "precision=fp8"], ["precision", "fp8"]),
    ("pt-eval-fraction", [*PT, "--set", "eval_fraction=1.5"], ["eval_fraction", "1.5"]),
    ("pt-schedule", [*PT, "--set", "schedule=wavy"], ["schedule", "wavy"]),
    ("pt-vocab-size-0", [*PT, "--set", "vocab_size=0"], ["vocab_size", "0"]),
    ("pt-micro-batch-negative", [*PT, "--set", "micro_batch_size=-4"], ["micro_batch_size", "-4"]),
    ("pt-warmup-too-long", [*PT, "--set", "warmup_steps=500"], ["warmup_steps", "500"]),
    ("pt-seq-len-too-long", [*PT, "--set", "seq_len=100000"], ["seq_len", "100000"]),
    ("pt-max-time-negative", [*PT, "--set", "max_time_s=-5"], ["max_time_s", "-5"]),
    ("pt-out-is-a-file", ["pretrain", "--out", "{afile}"], ["--out", "afile", "is a file"]),
    ("pt-out-under-a-file", ["pretrain", "--out", "{afile}/run"], ["--out", "afile", "is a file"]),
    ("pt-data-missing", [*PT, "--data", "{missing.txt}"], ["--data", "missing.txt", "does not exist"]),
    ("pt-data-not-utf8", [*PT, "--data", "{latin1.txt}"], ["latin1.txt:1", "invalid UTF-8"]),
    ("pt-data-no-documents", [*PT, "--data", "{emptydir}"], ["emptydir", "no documents"]),
    ("pt-model-unknown", [*PT, "--model", "nosuch-model"], ["nosuch-model", "preset"]),
    ("pt-objective-for-another-model", [*PT, "--objective", "clm"], ["objective", "clm", "bert"]),
    ("pt-resume-nothing", [*PT, "--resume", "latest"], ["--resume latest", "no checkpoint"]),
    ("pt-resume-missing-path", [*PT, "--resume", "{missing-ckpt}"], ["missing-ckpt", "no checkpoint"]),
    ("pt-price-negative", [*PT, "--price-per-hour", "-3"], ["price_per_hour", "-3"]),
    ("pt-price-not-a-number", [*PT, "--price-per-hour", "abc"], ["--price-per-hour", "'abc'"]),
    ("pt-objective-unknown", [*PT, "--objective", "magic"], ["--objective", "'magic'"]),
    ("pt-unknown-flag", [*PT, "--no-such-flag"], ["--no-such-flag"]),
    ("pt-zero-stage", [*PT, "--zero-stage", "7"], ["--zero-stage", "7"]),
    # ---- prepare
    ("prep-no-input", ["prepare", "--out", "{new}"], ["INPUT", "--embedded"]),
    ("prep-vocab-size-0", [*PREP, "--tokenizer", "wordpiece", "--vocab-size", "0"], ["--vocab-size", "0"]),
    (
        "prep-vocab-size-too-small",
        [*PREP, "--tokenizer", "bpe", "--vocab-size", "100"],
        ["--vocab-size 100", "too small"],
    ),
    (
        "prep-unigram-sentinels",
        [*PREP, "--tokenizer", "unigram", "--vocab-size", "50"],
        ["--vocab-size 50", "sentinels"],
    ),
    (
        "prep-tokenizer-exclusive",
        [*PREP, "--tokenizer", "bpe", "--tokenizer-from", "{gpt}"],
        ["--tokenizer bpe", "--tokenizer-from"],
    ),
    ("prep-input-missing", ["prepare", "{missing.txt}", "--out", "{new}"], ["INPUT", "missing.txt"]),
    ("prep-out-is-a-file", ["prepare", "--embedded", "--out", "{afile}"], ["--out", "afile"]),
    (
        "prep-tokenizer-from-missing",
        [*PREP, "--tokenizer-from", "{missing.json}"],
        ["--tokenizer-from", "missing.json"],
    ),
    (
        "prep-tokenizer-from-not-json",
        [*PREP, "--tokenizer-from", "{notjson.json}"],
        ["notjson.json", "not a tokenizers JSON"],
    ),
    ("prep-shard-tokens-0", [*PREP, "--shard-tokens", "0"], ["--shard-tokens", "0"]),
    ("prep-workers-0", [*PREP, "--workers", "0"], ["--workers", "0"]),
    ("prep-near-threshold", [*PREP, "--near-threshold", "1.5"], ["--near-threshold", "1.5"]),
    ("prep-num-perm", [*PREP, "--num-perm", "0"], ["--num-perm", "0"]),
    ("prep-min-chars-not-int", [*PREP, "--min-chars", "abc"], ["--min-chars", "'abc'"]),
    ("prep-ngram-size", [*PREP, "--ngram-size", "0"], ["--ngram-size", "0"]),
    ("prep-tokenizer-kind", [*PREP, "--tokenizer", "sentencepiece"], ["--tokenizer", "'sentencepiece'"]),
    ("prep-txt-docs", [*PREP, "--txt-docs", "para"], ["--txt-docs", "'para'"]),
    ("prep-jsonl-field-empty", [*PREP, "--jsonl-field", ""], ["--jsonl-field", "''"]),
    # ---- finetune
    ("ft-batch-size-0", [*FT, "--batch-size", "0"], ["--batch-size", "0"]),
    ("ft-epochs-0", [*FT, "--epochs", "0"], ["--epochs", "0"]),
    ("ft-max-length-0", [*FT, "--max-length", "0"], ["--max-length", "0"]),
    ("ft-max-length-too-long", [*FT, "--max-length", "100000"], ["--max-length 100000", "positions"]),
    ("ft-lr-negative", [*FT, "--lr", "-1"], ["--lr", "-1"]),
    ("ft-lr-not-a-number", [*FT, "--lr", "fast"], ["--lr", "'fast'"]),
    ("ft-train-without-label-column", [*FT[:6], "{nolabel.tsv}", *FT[7:]], ["nolabel.tsv", "--label-column"]),
    ("ft-eval-without-label-column", [*FT[:8], "{nolabel.tsv}", *FT[9:]], ["nolabel.tsv:2", "'label'"]),
    ("ft-train-missing", [*FT[:6], "{missing.tsv}", *FT[7:]], ["--train", "missing.tsv"]),
    ("ft-train-not-utf8", [*FT[:6], "{latin1.tsv}", *FT[7:]], ["latin1.tsv", "not UTF-8"]),
    ("ft-train-unknown-format", [*FT[:6], "{data.xml}", *FT[7:]], ["data.xml", "'.xml'"]),
    ("ft-model-missing", [*FT[:2], "{missing-model}", *FT[3:]], ["--model", "missing-model"]),
    (
        "ft-model-truncated-weights",
        [*FT[:2], "{broken}", *FT[3:]],
        ["broken", "model.safetensors", "cannot read"],
    ),
    ("ft-model-without-tokenizer", [*FT[:2], "{notok}", *FT[3:]], ["notok", "tokenizer.json"]),
    ("ft-labels-not-in-data", [*FT, "--labels", "a,b"], ["train.tsv:2", "'io'", "['a', 'b']"]),
    ("ft-labels-empty-item", [*FT, "--labels", "a,"], ["--labels", "'a,'"]),
    ("ft-seq2seq-on-encoder", [*FT[:4], "seq2seq", *FT[5:]], ["--task seq2seq", "bert"]),
    (
        "ft-instruct-on-encoder",
        [*FT[:4], "instruct", "--train", "{instruct.jsonl}", "--eval", "{instruct.jsonl}", *FT[9:]],
        ["--task instruct", "bert"],
    ),
    (
        "ft-template-without-prompt",
        [
            "finetune",
            "--model",
            "{gpt}",
            "--task",
            "instruct",
            "--train",
            "{instruct.jsonl}",
            "--eval",
            "{instruct.jsonl}",
            "--template",
            "no slot",
            "--out",
            "{new}",
        ],
        ["--template", "'no slot'"],
    ),
    ("ft-lora-r-0", [*FT, "--peft", "lora", "--lora-r", "0"], ["--lora-r", "0"]),
    ("ft-out-is-a-file", [*FT[:-3], "--out", "{afile}"], ["--out", "afile"]),
    ("ft-text-column-missing", [*FT, "--text-column", "nope"], ["train.tsv:2", "'nope'"]),
    (
        "ft-virtual-tokens-0",
        [*FT, "--peft", "prompt", "--num-virtual-tokens", "0"],
        ["--num-virtual-tokens", "0"],
    ),
    ("ft-adapter-size-0", [*FT, "--peft", "adapter", "--adapter-size", "0"], ["--adapter-size", "0"]),
    (
        "ft-doc-stride",
        [*FT[:4], "qa", *FT[5:], "--doc-stride", "200"],
        ["--doc-stride 200", "--max-length 128"],
    ),
    ("ft-peft-unknown", [*FT, "--peft", "magic"], ["--peft", "'magic'"]),
    ("ft-dev-missing", [*FT, "--dev", "{missing.tsv}"], ["--dev", "missing.tsv", "does not exist"]),
    ("ft-dev-fraction-1", [*FT, "--dev-fraction", "1"], ["--dev-fraction", "1"]),
    ("ft-dev-fraction-0", [*FT, "--dev-fraction", "0"], ["--dev-fraction", "0"]),
    ("ft-dev-bad-label", [*FT, "--dev", "{nolabel.tsv}"], ["nolabel.tsv:2", "'label'"]),
    (
        "ft-dev-with-embedded-task",
        [*FT[:6], "stdlib-docstrings", "--eval", "stdlib-docstrings", "--dev", "{train.tsv}", *FT[9:]],
        ["--dev", "train.tsv", "embedded"],
    ),
    (
        "ft-too-few-to-carve-dev",
        [
            "finetune",
            "--model",
            "{gpt}",
            "--task",
            "instruct",
            "--train",
            "{instruct.jsonl}",
            "--eval",
            "{instruct.jsonl}",
            "--out",
            "{new}",
        ],
        ["--train has 1 example", "--dev"],
    ),
    ("ft-task-unknown", [*FT[:4], "regression", *FT[5:]], ["--task", "'regression'"]),
    # ---- generate
    ("gen-max-new-tokens-0", [*GEN, "--max-new-tokens", "0"], ["--max-new-tokens", "0"]),
    (
        "gen-max-new-tokens-too-many",
        [*GEN, "--max-new-tokens", "100000"],
        ["--max-new-tokens 100000", "positions"],
    ),
    ("gen-temperature-negative", [*GEN, "--temperature", "-1"], ["--temperature", "-1"]),
    ("gen-temperature-not-a-number", [*GEN, "--temperature", "hot"], ["--temperature", "'hot'"]),
    (
        "gen-temperature-0-with-top-k",
        [*GEN, "--temperature", "0", "--top-k", "5"],
        ["--temperature 0", "--top-k"],
    ),
    ("gen-top-p-above-1", [*GEN, "--top-p", "1.5"], ["--top-p", "1.5"]),
    ("gen-top-p-0", [*GEN, "--top-p", "0"], ["--top-p", "0"]),
    ("gen-top-k-negative", [*GEN, "--top-k", "-1"], ["--top-k", "-1"]),
    ("gen-beams-0", [*GEN, "--beams", "0"], ["--beams", "0"]),
    ("gen-beams-with-sampling", [*GEN, "--beams", "2", "--sample"], ["--beams 2", "sampling"]),
    ("gen-repetition-penalty-0", [*GEN, "--repetition-penalty", "0"], ["--repetition-penalty", "0"]),
    ("gen-encoder-only-model", [*GEN[:2], "{bert}", *GEN[3:]], ["--model", "bert", "encoder"]),
    ("gen-model-missing", [*GEN[:2], "{missing-model}", *GEN[3:]], ["--model", "missing-model"]),
    (
        "gen-model-truncated-weights",
        [*GEN[:2], "{broken-gpt}", *GEN[3:]],
        ["broken-gpt", "model.safetensors"],
    ),
    ("gen-no-prompt", GEN[:3], ["--prompt"]),
    # ---- icl
    ("icl-shots-not-a-number", [*ICL, "--shots", "a"], ["--shots", "'a'"]),
    ("icl-shots-negative", [*ICL, "--shots", "-1"], ["--shots", "-1"]),
    ("icl-shots-one-bad", [*ICL, "--shots", "1,x"], ["--shots", "'1,x'"]),
    ("icl-shots-more-than-pool", [*ICL, "--shots", "100"], ["--shots 100", "pool has 39"]),
    ("icl-limit-0", [*ICL, "--limit", "0"], ["--limit", "0"]),
    ("icl-limit-negative", [*ICL, "--limit", "-2"], ["--limit", "-2"]),
    ("icl-on-masked-lm", [*ICL[:2], "{bert}", *ICL[3:]], ["--model", "bert", "masked LM"]),
    ("icl-task-missing", [*ICL[:4], "{missing.jsonl}"], ["--task", "missing.jsonl"]),
    ("icl-task-without-labels", [*ICL[:4], "{nolabel.jsonl}"], ["nolabel.jsonl:1", "'label'"]),
    ("icl-verbalizers-malformed", [*ICL, "--verbalizers", "a"], ["--verbalizers", "'a'"]),
    ("icl-verbalizers-incomplete", [*ICL, "--verbalizers", "io=read"], ["--verbalizers", "['json']"]),
    ("icl-demos-missing", [*ICL, "--demos", "{missing.jsonl}"], ["--demos", "missing.jsonl"]),
    ("icl-template-without-text", [*ICL, "--template", "Label:"], ["--template", "'Label:'"]),
    # ---- bench
    ("bench-cuda-without-gpu", ["bench", "ops", "--device", "cuda"], ["--device cuda", "no CUDA GPU"]),
    ("bench-only-unknown", ["bench", "ops", "--only", "nosuch"], ["--only", "'nosuch'"]),
    ("bench-device-unknown", ["bench", "ops", "--device", "tpu"], ["--device", "'tpu'"]),
    ("bench-group-unknown", ["bench", "kernels"], ["'kernels'"]),
    ("bench-csv-is-a-folder", ["bench", "ops", "--csv", "{emptydir}"], ["--csv", "emptydir", "folder"]),
    ("bench-card-archs", ["bench", "card", "--archs", "90,75"], ["--archs", "'90,75'"]),
    ("bench-card-jobs", ["bench", "card", "--jobs", "0"], ["--jobs", "0"]),
    (
        "bench-card-logs-missing",
        ["bench", "card", "--csrc-logs", "{missing-logs}"],
        ["--csrc-logs", "missing-logs"],
    ),
    (
        "bench-card-doc-without-section",
        ["bench", "card", "--doc", "{afile}"],
        ["--doc", "afile", "kernel-card"],
    ),
    # ---- export-zero
    (
        "export-ckpt-missing",
        ["export-zero", "{missing-ckpt}", "--out", "{new}"],
        ["CKPT_DIR", "missing-ckpt"],
    ),
    (
        "export-not-a-zero-ckpt",
        ["export-zero", "{emptydir}", "--out", "{new}"],
        ["emptydir", "not a DeepSpeed checkpoint"],
    ),
    ("export-out-is-a-file", ["export-zero", "{emptydir}", "--out", "{afile}"], ["--out", "afile"]),
    ("export-dtype", ["export-zero", "{emptydir}", "--out", "{new}", "--dtype", "fp8"], ["--dtype", "'fp8'"]),
    ("export-no-out", ["export-zero", "{emptydir}"], ["--out"]),
]


def _argv(env: Path, argv: list[str], new: Path) -> list[str]:
    out = []
    for a in argv:
        if a == "{new}":
            out.append(str(new))
        elif a.startswith("{"):
            name, _, rest = a[1:].partition("}")
            out.append(str(env / name) + rest)
        else:
            out.append(a)
    return out


def test_the_sweep_is_wide():
    assert len(CASES) >= 60
    assert {argv[0] for _, argv, _ in CASES} == {
        "pretrain",
        "prepare",
        "finetune",
        "generate",
        "icl",
        "bench",
        "export-zero",
    }
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistake_is_one_line_and_exit_2(env, tmp_path, capsys, argv, words):
    new = tmp_path / "fresh-output"
    rc = main(_argv(env, argv, new))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert line.startswith(f"ptft {argv[0]}: error: "), line
    assert "Traceback" not in captured.err + captured.out
    missing = [w for w in words if w not in line]
    assert not missing, (missing, line)
    assert not new.exists(), f"{new} was left behind"


def test_an_unknown_command_is_one_line_too(capsys):
    assert main(["nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ptft: error: ") and "'nosuch'" in err[0]


def _console(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptft_fast", *argv], capture_output=True, text=True, timeout=300
    )


def test_console_entry_point_follows_the_contract_and_debug_shows_the_traceback(env):
    done = _console("finetune", "--model", str(env / "broken"), "--task", "cls", "--train", str(env / "train.tsv"),
                    "--eval", str(env / "train.tsv"))  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("ptft finetune: error: ") and "Traceback" not in done.stderr
    debug = _console("finetune", "--debug", "--model", str(env / "broken"), "--task", "cls", "--train",
                     str(env / "train.tsv"), "--eval", str(env / "train.tsv"))  # fmt: skip
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "WeightsFileError" in debug.stderr


def test_internal_errors_stay_tracebacks(monkeypatch):
    """A bug of ours (here: a ValueError from inside the library) is not dressed as a user mistake."""
    import ptft_fast.cli.icl as icl

    def boom(_text):
        raise ValueError("internal")

    monkeypatch.setattr(icl, "parse_verbalizers", boom)
    with pytest.raises(ValueError, match="internal"):
        main(["icl", "--model", "m", "--task", "t"])


def test_generate_temperature_0_is_greedy(env, capsys):
    base = [*_argv(env, GEN, env / "unused"), "--max-new-tokens", "12", "--no-stream"]
    assert main(base) == 0
    greedy = capsys.readouterr().out
    assert main([*base, "--temperature", "0", "--seed", "3"]) == 0
    assert capsys.readouterr().out == greedy
    assert main([*base, "--temperature", "1", "--seed", "3"]) == 0  # sampling does differ here
    assert capsys.readouterr().out != greedy


def test_icl_limit_cuts_queries_not_demonstrations(env, capsys):
    argv = _argv(env, ICL, env / "unused")
    assert main([*argv, "--limit", "1", "--shots", "1,4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 queries") and "k=4\taccuracy=" in out

"""``ptft prepare`` end to end: embedded corpus and a folder of .txt/.jsonl files."""

import argparse
import importlib.util
import json
import sys

from ptft_fast.cli import prepare as prepare_cli
from ptft_fast.data.shards import TokenShards
from ptft_fast.data.tokenizer import PtftTokenizer


def _run(argv: list[str]) -> int:
    """Run through the real ``ptft`` entry point when every subcommand imports, else this parser."""
    if importlib.util.find_spec("ptft_fast.cli.bench") is not None:
        from ptft_fast.cli import main

        return main(["prepare", *argv])
    parser = argparse.ArgumentParser(prog="ptft")
    prepare_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", *argv])
    try:  # what ptft_fast.cli.main does with bad input
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"ptft prepare: error: {exc}", file=sys.stderr)
        return 2


def test_prepare_embedded_with_tokenizer_and_shards(tmp_path, capsys):
    out = tmp_path / "emb"
    argv = ["--embedded", "--out", str(out), "--tokenizer", "bpe", "--vocab-size", "800", "--no-progress"]
    assert _run([*argv, "--shard-tokens", "40000", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "exact_dedup" in printed and "total out" in printed and "shard(s)" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["docs_in"] == 79 and 0 < report["docs_out"] <= 79
    shards = TokenShards(out / "shards")
    assert shards.num_docs == report["docs_out"] - report["docs_eval"] and shards.num_shards >= 2
    assert TokenShards(out / "eval_shards").num_docs == report["docs_eval"] > 0  # held out
    assert PtftTokenizer.from_file(out).vocab_size == 800


def test_prepare_folder_of_txt_and_jsonl(tmp_path, capsys, corpus):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    paras = [p for d in corpus[:12] for p in d.split("\n\n") if len(p) > 200]
    (src / "a.txt").write_text("\n\n".join(paras[:20]) + "\n\n" + paras[0] + "\n")  # exact duplicate
    (src / "nested" / "b.jsonl").write_bytes(
        b"".join(json.dumps({"body": p}).encode() + b"\n" for p in paras[20:40])
        + b'{"body": "contact me at someone@example.com please, it is about the long document above ok"}\n'
        + b'{"body": "bro\xffken"}\n'
    )
    out = tmp_path / "out"
    argv = [str(src), "--out", str(out), "--jsonl-field", "body", "--tokenizer", "wordpiece"]
    assert _run([*argv, "--vocab-size", "500", "--workers", "1", "--no-progress", "--min-chars", "20"]) == 0
    cap = capsys.readouterr()
    assert "b.jsonl:22: invalid UTF-8" in cap.err
    report = json.loads((out / "report.json").read_text())
    assert report["docs_in"] == 42
    assert {s["stage"]: s["docs_removed"] for s in report["stages"]}["exact_dedup"] == 1
    assert report["pii_replacements"] == {"email": 1}
    assert report["broken_lines"][0]["line"] == 22
    texts = [json.loads(line)["text"] for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert any("<EMAIL>" in t for t in texts) and not any("@example.com" in t for t in texts)
    assert TokenShards(out / "shards").num_docs == len(texts) == report["docs_out"] - report["docs_eval"]


def test_prepare_bad_input_is_a_clear_error(tmp_path, capsys):
    assert _run(["--out", str(tmp_path)]) == 2
    assert "give INPUT files/folders or --embedded" in capsys.readouterr().err
    assert _run([str(tmp_path / "missing.txt"), "--out", str(tmp_path)]) == 2
    assert "missing.txt" in capsys.readouterr().err

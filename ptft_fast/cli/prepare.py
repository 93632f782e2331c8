"""``ptft prepare``: clean a corpus, optionally train a tokenizer and write token shards.

Writes ``OUT/corpus.jsonl`` and ``OUT/report.json`` (and prints the report table); with
``--tokenizer`` or ``--tokenizer-from`` also ``OUT/tokenizer.json`` and ``OUT/shards/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptft_fast.cli.errors import (
    UsageError,
    float_in,
    input_path,
    int_at_least,
    output_folder,
    removed_on_error,
)

DESCRIPTION = """Clean a corpus (quality filters, exact and near-duplicate removal, e-mail/phone/IP scrubbing) into
OUT/corpus.jsonl with a report of what each stage removed; with --tokenizer (or --tokenizer-from) also
train a tokenizer and write token shards (OUT/shards) that ptft pretrain --data reads."""

EXAMPLES = """examples:
  ptft prepare --embedded --out prepared --tokenizer wordpiece --vocab-size 4096
  ptft prepare corpus/ extra.jsonl --out prepared --tokenizer bpe --workers 2
  ptft prepare notes.txt --out cleaned --txt-docs line --no-near-dedup
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare",
        help="clean, dedup and scrub a corpus; train a tokenizer; write token shards",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("inputs", nargs="*", help=".txt / .jsonl files or folders of them (read as a stream)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--embedded", action="store_true", help="add the embedded pydoc_data.topics corpus")
    p.add_argument("--jsonl-field", default="text", help="text field of .jsonl records")
    p.add_argument(
        "--txt-docs",
        choices=("blank", "line", "file"),
        default="blank",
        help="document unit of .txt files: blank-line separated, one per line, or the whole file",
    )
    f = p.add_argument_group("quality filters (a negative value switches a rule off)")
    f.add_argument("--min-chars", type=int, default=50, help="drop documents shorter than this")
    f.add_argument("--max-chars", type=int, default=1_000_000, help="drop documents longer than this")
    f.add_argument("--min-words", type=int, default=5, help="drop documents with fewer words")
    f.add_argument(
        "--min-alpha-ratio", type=float, default=0.6, help="least share of letters among non-space characters"
    )
    f.add_argument("--max-symbol-ratio", type=float, default=0.1, help="most # and ... symbols per word")
    f.add_argument(
        "--max-dup-line-frac", type=float, default=0.3, help="most share of lines that repeat an earlier line"
    )
    f.add_argument(
        "--max-dup-ngram-frac",
        type=float,
        default=0.2,
        help="most share of characters in repeated word n-grams",
    )
    f.add_argument("--ngram-size", type=int_at_least(1), default=5, help="n of the repeated n-gram rule")
    d = p.add_argument_group("dedup and PII")
    d.add_argument("--no-exact-dedup", action="store_true", help="keep exact duplicates")
    d.add_argument("--no-near-dedup", action="store_true", help="keep near duplicates")
    d.add_argument(
        "--near-threshold",
        type=float_in(0.0, 1.0, low_open=True),
        default=0.8,
        help="MinHash-LSH Jaccard similarity above which documents are near duplicates",
    )
    d.add_argument("--num-perm", type=int_at_least(2), default=128, help="MinHash permutations")
    d.add_argument("--no-pii", action="store_true", help="do not scrub e-mails, phones and IPs")
    t = p.add_argument_group("tokenizer and shards")
    t.add_argument(
        "--tokenizer",
        choices=("wordpiece", "bpe", "unigram"),
        help="train this kind on the cleaned corpus (default: none, no shards): wordpiece for BERT, "
        "bpe for GPT-2/RoBERTa/BART, unigram for T5",
    )
    t.add_argument(
        "--tokenizer-from",
        help="use an existing tokenizer.json or HF tokenizer folder (default: none)",
    )
    t.add_argument("--vocab-size", type=int_at_least(1), default=8000, help="tokenizer vocabulary size")
    t.add_argument("--num-sentinels", type=int_at_least(0), default=100, help="unigram (T5) sentinel tokens")
    t.add_argument("--shard-tokens", type=int_at_least(1), default=1 << 24, help="tokens per shard file")
    t.add_argument(
        "--workers", type=int_at_least(1), default=None, help="tokenizer processes (default: all cores)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _opt(v):
    return None if v is not None and v < 0 else v


SPECIALS = {"wordpiece": 5, "bpe": 5 + 256, "unigram": 3}  # special tokens (+ byte alphabet)


def validate(args: argparse.Namespace) -> None:
    """Every option checked before anything is read or written (UsageError naming it)."""
    if not args.inputs and not args.embedded:
        raise UsageError("give INPUT files/folders or --embedded")
    for item in args.inputs:
        input_path("INPUT", item)
    output_folder("--out", args.out)
    if args.tokenizer and args.tokenizer_from:
        raise UsageError(
            f"--tokenizer {args.tokenizer} and --tokenizer-from {args.tokenizer_from} are exclusive"
        )
    if args.tokenizer_from:
        from ptft_fast.data.tokenizer import PtftTokenizer

        PtftTokenizer.from_file(input_path("--tokenizer-from", args.tokenizer_from))  # parses
    if not args.jsonl_field:
        raise UsageError("--jsonl-field must name a field, got ''")
    if args.tokenizer:
        least = SPECIALS[args.tokenizer] + (args.num_sentinels if args.tokenizer == "unigram" else 0) + 1
        if args.vocab_size < least:
            raise UsageError(
                f"--vocab-size {args.vocab_size} is too small for a {args.tokenizer} tokenizer: it needs "
                f"at least {least} (special tokens"
                + (f", {args.num_sentinels} sentinels" if args.tokenizer == "unigram" else "")
                + (", 256 bytes" if args.tokenizer == "bpe" else "")
                + ")"
            )


def run(args: argparse.Namespace) -> int:
    validate(args)
    out = Path(args.out)
    with removed_on_error(out):
        return _prepare(args, out)


def _prepare(args: argparse.Namespace, out: Path) -> int:
    from ptft_fast.data.corpus import embedded_documents, read_documents
    from ptft_fast.data.dedup import NearDedupConfig
    from ptft_fast.data.filters import FilterConfig
    from ptft_fast.data.prepare import PrepareConfig, iter_prepared, prepare_corpus
    from ptft_fast.data.shards import ShardConfig, write_shards
    from ptft_fast.data.tokenizer import PtftTokenizer, TokenizerConfig, train_tokenizer

    broken: list = []
    docs = read_documents(
        args.inputs, broken.append, jsonl_field=args.jsonl_field, txt_doc_split=args.txt_docs
    )
    if args.embedded:
        import itertools

        docs = itertools.chain(embedded_documents(), docs)
    cfg = PrepareConfig(
        filters=FilterConfig(
            min_chars=_opt(args.min_chars),
            max_chars=_opt(args.max_chars),
            min_words=_opt(args.min_words),
            min_alpha_ratio=_opt(args.min_alpha_ratio),
            max_symbol_ratio=_opt(args.max_symbol_ratio),
            max_dup_line_frac=_opt(args.max_dup_line_frac),
            max_dup_ngram_frac=_opt(args.max_dup_ngram_frac),
            ngram_size=args.ngram_size,
        ),
        exact_dedup=not args.no_exact_dedup,
        near_dedup=not args.no_near_dedup,
        near=NearDedupConfig(threshold=args.near_threshold, num_perm=args.num_perm),
        scrub_pii=not args.no_pii,
        progress=not args.no_progress,
    )
    report = prepare_corpus(docs, out, cfg, broken)
    print(report.table())
    for b in report.broken_lines[:20]:
        print(f"skipped {b.source}:{b.line}: {b.reason}", file=sys.stderr)
    if len(report.broken_lines) > 20:
        print(f"... {len(report.broken_lines) - 20} more skipped lines in report.json", file=sys.stderr)
    if report.docs_out == 0:
        print("no documents left after cleaning", file=sys.stderr)
        return 1
    if not (args.tokenizer or args.tokenizer_from):
        return 0
    if args.tokenizer_from:
        tok = PtftTokenizer.from_file(args.tokenizer_from)
    else:
        tcfg = TokenizerConfig(
            kind=args.tokenizer, vocab_size=args.vocab_size, num_sentinels=args.num_sentinels
        )
        tok = train_tokenizer(iter_prepared(out), tcfg, progress=not args.no_progress)
    tok.save(out)
    index = write_shards(
        iter_prepared(out),
        tok,
        out / "shards",
        ShardConfig(shard_tokens=args.shard_tokens, num_workers=args.workers, progress=not args.no_progress),
    )
    print(
        f"tokenizer ({tok.kind}, vocab {tok.vocab_size}) -> {out / 'tokenizer.json'}; "
        f"{index['num_tokens']} tokens in {index['num_docs']} docs, {len(index['shards'])} shard(s) "
        f"({index['dtype']}) -> {out / 'shards'}"
    )
    return 0

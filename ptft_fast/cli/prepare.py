"""``ptft prepare``: clean a corpus, optionally train a tokenizer and write token shards.

Writes ``OUT/corpus.jsonl`` and ``OUT/report.json`` (and prints the report table); with
``--tokenizer`` or ``--tokenizer-from`` also ``OUT/tokenizer.json`` and ``OUT/shards/``.
"""

from __future__ import annotations

import argparse
import itertools
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

DESCRIPTION = """Clean a corpus (language, quality filters, exact and near-duplicate removal, e-mail/phone/IP
scrubbing) into OUT/corpus.jsonl, holding every k-th kept document out in OUT/eval.jsonl, with a
report of what each stage removed; with --tokenizer (or --tokenizer-from) also train a tokenizer and
write token shards (OUT/shards, OUT/eval_shards) that ptft pretrain --data reads (it evaluates on the
held-out documents). Filter presets: clean (default: keeps short clean documents such as titles and
one-line definitions), web (Gopher + C4 rules for crawled pages), none."""

EXAMPLES = """examples:
  ptft prepare --embedded --out prepared --tokenizer wordpiece --vocab-size 4096
  ptft prepare titles.txt --out prepared --tokenizer bpe --contamination test_set.jsonl
  ptft prepare crawl/ --out web --filters web --languages en --sentence-dedup --quality-filter
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
        choices=("auto", "blank", "line", "file"),
        default="auto",
        help="document unit of .txt files: blank-line separated, one per line, or the whole file; auto "
        "(default): one per line when a file has no blank line in its first 10,000 lines and >= 10 lines, "
        "else blank-line separated",
    )
    p.add_argument(
        "--eval-fraction",
        type=float_in(0.0, 0.5),
        default=0.05,
        help="share of kept documents held out in eval.jsonl / eval_shards (every round(1/f)-th; 0: none)",
    )
    f = p.add_argument_group(
        "quality filters (a preset, then single rules; a negative value switches a rule off)"
    )
    f.add_argument(
        "--filters",
        choices=("clean", "web", "none"),
        default="clean",
        help="clean (default): no length floor, drops empty docs, dumps over 1M chars, text under 25%% "
        "letters, repeated lines/n-grams; web: Gopher + C4 rules for crawled pages (>= 50 words, stop "
        "words, mean word length, >= 5 sentences, ...); none: empty docs only",
    )
    f.add_argument(
        "--min-chars",
        type=int,
        help="drop documents shorter than this (default: the preset's; clean and web: off)",
    )
    f.add_argument(
        "--max-chars", type=int, help="drop documents longer than this (default: the preset's, 1,000,000)"
    )
    f.add_argument(
        "--min-words",
        type=int,
        help="drop documents with fewer words (default: the preset's; clean 1, web 50)",
    )
    f.add_argument(
        "--min-alpha-ratio",
        type=float,
        help="least share of letters among non-space characters (default: the preset's; clean 0.25)",
    )
    f.add_argument(
        "--max-symbol-ratio",
        type=float,
        help="most # and ... symbols per word (default: the preset's; clean off, web 0.1)",
    )
    f.add_argument(
        "--max-dup-line-frac",
        type=float,
        help="most share of lines that repeat an earlier line (default: the preset's, 0.3)",
    )
    f.add_argument(
        "--max-dup-ngram-frac",
        type=float,
        help="most share of characters in repeated word n-grams (default: the preset's; 0.2, web 0.15)",
    )
    f.add_argument(
        "--ngram-size", type=int_at_least(1), help="n of the repeated n-gram rule (default: the preset's, 5)"
    )
    f.add_argument(
        "--languages",
        help="keep only documents in these languages, comma-separated ISO 639-1 codes, e.g. en,de "
        "(py3langid, model bundled; default: all)",
    )
    f.add_argument(
        "--quality-filter",
        action="store_true",
        help="classifier filter: hashed 1-2-gram logistic regression, the reference text against the "
        "first 2,000 input documents; keeps documents scoring >= --quality-threshold (default: off)",
    )
    f.add_argument(
        "--quality-reference",
        nargs="+",
        help=".txt/.jsonl files or folders of text you trust (default: the embedded pydoc corpus, an example)",
    )
    f.add_argument(
        "--quality-threshold",
        type=float_in(0.0, 1.0),
        default=0.5,
        help="least P(reference) a document needs",
    )
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
    d.add_argument(
        "--sentence-dedup",
        action="store_true",
        help="also drop sentences of >= 5 words seen earlier in the corpus (boilerplate across documents)",
    )
    d.add_argument("--no-pii", action="store_true", help="do not scrub e-mails, phones and IPs")
    d.add_argument(
        "--pii-regions",
        default="US",
        help="countries (ISO codes, comma-separated) whose national phone formats are scrubbed; numbers "
        "written with + or 00 are validated for every country (phonenumbers) (default: US)",
    )
    c = p.add_argument_group("contamination")
    c.add_argument(
        "--contamination",
        metavar="EVAL_FILE",
        help="report which examples of this .txt (one per line) / .jsonl evaluation file share a 13-gram "
        "with the cleaned corpus (GPT-3's check) -> OUT/contamination.json (default: none)",
    )
    c.add_argument("--contamination-field", default="text", help="text field of a .jsonl evaluation file")
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


FILTER_FLAGS = (
    "min_chars", "max_chars", "min_words", "min_alpha_ratio", "max_symbol_ratio", "max_dup_line_frac",
    "max_dup_ngram_frac", "ngram_size",
)  # fmt: skip


def filter_config(args: argparse.Namespace):
    """The --filters preset with every single-rule flag given applied (negative: rule off)."""
    from ptft_fast.data.filters import filter_preset

    given = {k: getattr(args, k) for k in FILTER_FLAGS if getattr(args, k) is not None}
    return filter_preset(args.filters, **{k: None if v < 0 else v for k, v in given.items()})


def _codes(value: str | None, upper: bool) -> tuple[str, ...]:
    codes = tuple(c.strip() for c in (value or "").split(",") if c.strip())
    return tuple(c.upper() if upper else c.lower() for c in codes)


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
    for item in args.quality_reference or []:
        input_path("--quality-reference", item)
    if args.contamination:
        input_path("--contamination", args.contamination, kind="file")
    if args.languages is not None:
        from ptft_fast.data.langid import LanguageFilter

        try:
            LanguageFilter(_codes(args.languages, upper=False))
        except ValueError as exc:
            raise UsageError(f"--languages {args.languages}: {str(exc).partition(': ')[2]}") from None
    import phonenumbers

    bad = [r for r in _codes(args.pii_regions, True) if r not in phonenumbers.SUPPORTED_REGIONS]
    if bad or not _codes(args.pii_regions, True):
        raise UsageError(
            f"--pii-regions {args.pii_regions!r}: not ISO country codes phonenumbers knows: {bad}"
        )
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
    from ptft_fast.data.prepare import EVAL_FILE, PrepareConfig, iter_prepared, prepare_corpus
    from ptft_fast.data.shards import ShardConfig, write_shards
    from ptft_fast.data.tokenizer import PtftTokenizer, TokenizerConfig, train_tokenizer

    broken: list = []
    splits = txt_splits(args)
    docs = read_documents(
        args.inputs, broken.append, jsonl_field=args.jsonl_field, txt_doc_split=args.txt_docs
    )
    if args.embedded:
        docs = itertools.chain(embedded_documents(), docs)
    quality = None
    if args.quality_filter:
        docs, quality = fit_quality_filter(args, docs)
    cfg = PrepareConfig(
        filters=filter_config(args),
        exact_dedup=not args.no_exact_dedup,
        near_dedup=not args.no_near_dedup,
        near=NearDedupConfig(threshold=args.near_threshold, num_perm=args.num_perm),
        sentence_dedup=args.sentence_dedup,
        scrub_pii=not args.no_pii,
        pii_regions=_codes(args.pii_regions, True),
        languages=_codes(args.languages, False),
        quality=quality,
        eval_fraction=args.eval_fraction,
        progress=not args.no_progress,
    )
    report = prepare_corpus(docs, out, cfg, broken)
    report.txt_splits = splits
    for path, how in splits.items():
        if args.txt_docs == "auto":
            print(f"{path}: {'one document per line' if how == 'line' else 'blank-line separated documents'} "
                  "(--txt-docs auto)")  # fmt: skip
    print(report.table())
    if args.contamination:
        check_contamination(args, out)
    for b in report.broken_lines[:20]:
        print(f"skipped {b.source}:{b.line}: {b.reason}", file=sys.stderr)
    if len(report.broken_lines) > 20:
        print(f"... {len(report.broken_lines) - 20} more skipped lines in report.json", file=sys.stderr)
    if report.docs_out == 0:
        hint = ""
        if report.stage("filter:too_long").docs_removed and any(v == "blank" for v in splits.values()):
            hint = (": every .txt document was too long — if your file holds one document per line, "
                    "give --txt-docs line")  # fmt: skip
        print(f"no documents left after cleaning{hint}", file=sys.stderr)
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
    shard_cfg = ShardConfig(
        shard_tokens=args.shard_tokens, num_workers=args.workers, progress=not args.no_progress
    )
    if report.docs_eval:
        write_shards(iter_prepared(out, EVAL_FILE), tok, out / "eval_shards", shard_cfg)
    index = write_shards(iter_prepared(out), tok, out / "shards", shard_cfg)
    print(
        f"tokenizer ({tok.kind}, vocab {tok.vocab_size}) -> {out / 'tokenizer.json'}; "
        f"{index['num_tokens']} tokens in {index['num_docs']} docs, {len(index['shards'])} shard(s) "
        f"({index['dtype']}) -> {out / 'shards'}"
        + (f"; {report.docs_eval} held-out docs -> {out / 'eval_shards'}" if report.docs_eval else "")
    )
    return 0


def txt_splits(args: argparse.Namespace) -> dict[str, str]:
    """How each .txt input is cut into documents (``--txt-docs auto`` resolved per file)."""
    from ptft_fast.data.corpus import TEXT_SUFFIXES, detect_txt_split, expand_inputs

    txt = [p for p in expand_inputs(args.inputs) if p.suffix in TEXT_SUFFIXES]
    return {str(p): detect_txt_split(p) if args.txt_docs == "auto" else args.txt_docs for p in txt}


QUALITY_SAMPLE = 2000  # first input documents the classifier learns as "corpus" (negatives)


def fit_quality_filter(args: argparse.Namespace, docs):
    """(the same document stream, a QualityClassifier fitted on the reference vs its first
    QUALITY_SAMPLE documents)."""
    from ptft_fast.data.corpus import embedded_corpus, read_documents
    from ptft_fast.data.quality_classifier import QualityClassifier

    head = list(itertools.islice(docs, QUALITY_SAMPLE))
    if args.quality_reference:
        reference = [d.text for d in read_documents(args.quality_reference, txt_doc_split="auto")]
    else:
        reference = embedded_corpus()
    classifier = QualityClassifier(threshold=args.quality_threshold).fit(reference, [d.text for d in head])
    return itertools.chain(head, docs), classifier


def check_contamination(args: argparse.Namespace, out: Path) -> None:
    """13-gram overlap of the --contamination file with the cleaned corpus (train and held-out)."""
    from ptft_fast.data.contamination import contamination
    from ptft_fast.data.corpus import read_documents
    from ptft_fast.data.prepare import EVAL_FILE, iter_prepared
    from ptft_fast.utils.atomic import atomic_write_json

    examples = [
        d.text
        for d in read_documents(
            [args.contamination], jsonl_field=args.contamination_field, txt_doc_split="line"
        )
    ]
    corpus = itertools.chain(iter_prepared(out), iter_prepared(out, EVAL_FILE))
    report = contamination(examples, corpus)
    atomic_write_json(out / "contamination.json", {"eval_file": args.contamination, **report.to_dict()})
    print(report.summary() + f" -> {out / 'contamination.json'}")

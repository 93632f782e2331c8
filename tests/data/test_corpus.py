"""Readers, quality filters, dedup, PII scrubbing and the preparation report."""

import json

from ptft_fast.data.corpus import embedded_corpus, read_documents
from ptft_fast.data.dedup import ExactDeduper, NearDeduper
from ptft_fast.data.filters import FilterConfig, dup_line_fraction, dup_ngram_fraction, quality_reason
from ptft_fast.data.pii import scrub_pii
from ptft_fast.data.prepare import PrepareConfig, prepare_corpus, read_prepared

MAIL = "Questions about the garden party go to bob@example.com before the end of the month."
GOOD = "The quick brown fox jumps over the lazy dog while the farmer watches from the gate."


def test_embedded_corpus_is_large_and_text():
    docs = embedded_corpus()
    assert len(docs) == 79
    assert sum(len(d) for d in docs) > 400_000
    assert all(isinstance(d, str) and d for d in docs)


def test_txt_blank_line_documents_and_broken_utf8(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"first doc line one\nline two\n\nsecond \xff\xfe broken\nsecond ok\n\n\nthird\n")
    broken = []
    docs = list(read_documents([f], broken.append))
    assert [d.text for d in docs] == ["first doc line one\nline two", "second ok", "third"]
    assert [d.line for d in docs] == [1, 5, 8]
    assert len(broken) == 1
    assert broken[0].source == str(f) and broken[0].line == 4
    assert "invalid UTF-8" in broken[0].reason
    # nothing was decoded with replacement characters
    assert all("\ufffd" not in d.text for d in docs)


def test_jsonl_field_and_bad_lines(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_bytes(
        b'{"body": "one"}\n'
        b"not json\n"
        b'{"text": "wrong field"}\n'
        b'{"body": "caf\xc3\xa9"}\n'
        b'{"body": "bad \xc3\x28"}\n'
    )
    broken = []
    docs = list(read_documents([f], broken.append, jsonl_field="body"))
    assert [d.text for d in docs] == ["one", "café"]
    assert [(b.line, b.reason.split(":")[0]) for b in broken] == [
        (2, "invalid JSON"),
        (3, "no string field 'body'"),
        (5, "invalid UTF-8 at byte 14"),
    ]


def test_folder_is_read_recursively_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.txt").write_text("z doc")
    (tmp_path / "a.jsonl").write_text('{"text": "a doc"}\n')
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    assert [d.text for d in read_documents([tmp_path])] == ["a doc", "z doc"]


def test_quality_rules():
    cfg = FilterConfig()
    assert quality_reason(GOOD, cfg) is None
    assert quality_reason("short", cfg) == "too_short"
    assert quality_reason("1234 5678 9012 3456 7890 " * 5, cfg) == "low_alpha_ratio"
    assert (
        quality_reason("# header # more ## text ... and ... words here ok " * 3, cfg) == "high_symbol_ratio"
    )
    lines = "\n".join(["same line here again"] * 5 + ["a different line of words"])
    assert dup_line_fraction(lines) == 4 / 6
    assert quality_reason(lines, cfg) == "repeated_lines"
    rep = " ".join(["alpha beta gamma delta epsilon"] * 4) + " " + GOOD
    assert dup_ngram_fraction(rep.split(), 5) > 0.2
    assert quality_reason(rep, FilterConfig(max_dup_line_frac=None)) == "repeated_ngrams"
    # thresholds are options: switching a rule off keeps the document
    assert quality_reason("short", FilterConfig(min_chars=None, min_words=None)) is None


def test_exact_and_near_dedup():
    exact = ExactDeduper()
    assert not exact.is_duplicate(GOOD)
    assert exact.is_duplicate("  " + GOOD.replace(" ", "  \n") + "\n")
    near = NearDeduper()
    base = " ".join(f"word{i}" for i in range(300))
    assert not near.is_duplicate(base)
    assert near.is_duplicate(base.replace("word150", "changed"))  # one word of 300 differs
    assert not near.is_duplicate(" ".join(f"other{i}" for i in range(300)))


def test_pii_scrubbing():
    text = (
        "Write to jane.doe+news@mail.example.org or call +1 (415) 555-0199 / 020 7946 0958. "
        "Hosts 192.168.10.1 and 2001:db8:85a3::8a2e:370:7334 are down."
    )
    out, counts = scrub_pii(text, regions=("US", "GB"))  # 020 …: a national UK number
    assert out == (
        "Write to <EMAIL> or call <PHONE> / <PHONE>. Hosts <IP_ADDRESS> and <IP_ADDRESS> are down."
    )
    assert counts == {"email": 1, "phone": 2, "ipv4": 1, "ipv6": 1}


def test_pii_leaves_code_numbers_and_versions_alone():
    text = "x[::2] at 12:30:45 on 2024-01-15, python 3.10.2, 999.1.1.1, ocert-2011-003, id 12345"
    assert scrub_pii(text) == (text, {})


def test_prepare_report_counts_each_stage(tmp_path):
    src = tmp_path / "in.jsonl"
    near = GOOD + " " + " ".join(f"extra{i}" for i in range(200))
    rows = [GOOD, GOOD, "tiny", near, near.replace("extra100", "extraX"), MAIL]
    src.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    broken = []
    report = prepare_corpus(
        read_documents([src], broken.append),
        tmp_path / "out",
        PrepareConfig(filters=FilterConfig(min_chars=50), progress=False),  # clean has no length floor
    )
    removed = {s.stage: s.docs_removed for s in report.stages}
    assert removed["filter:too_short"] == 1
    assert removed["exact_dedup"] == 1
    assert removed["near_dedup"] == 1
    assert report.docs_in == 6 and report.docs_out == 3
    assert report.pii_replacements == {"email": 1}
    assert read_prepared(tmp_path / "out") == [GOOD, near, MAIL.replace("bob@example.com", "<EMAIL>")]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["docs_out"] == 3 and "exact_dedup" in report.table()
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temp files

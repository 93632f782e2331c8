"""``ptft prepare`` on corpora users bring: a line-per-document file of short clean lines (issue 23's
done-when), filter presets, held-out documents, language ID, the classifier filter, sentence dedup
and the contamination report."""

from __future__ import annotations

import json
import random
import re

import pytest

from ptft_fast.cli import main
from ptft_fast.data.contamination import contamination
from ptft_fast.data.corpus import embedded_corpus
from ptft_fast.data.dedup import SentenceDeduper
from ptft_fast.data.filters import STOP_WORDS, filter_preset, quality_reason
from ptft_fast.data.langid import LanguageFilter, language_of
from ptft_fast.data.quality_classifier import QualityClassifier

_PEOPLE = ["Leonhard Euler", "Charles Darwin", "Ada Lovelace", "Carl Gauss", "Marie Curie", "Isaac Newton",
           "Emmy Noether", "Alan Turing", "Johann Bach", "Jane Austen"]  # fmt: skip
_WARS = ["Seven Years' War", "Thirty Years' War", "War of the Spanish Succession", "Crimean War"]
_TOPICS = ["graph theory", "natural selection", "the analytical engine", "number theory", "radioactivity",
           "optics", "abstract algebra", "computability", "counterpoint", "the novel"]  # fmt: skip


def short_line_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short one-line documents: titles, definitions, first sentences with dates."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        a = rng.randrange(1500, 1950)
        b = a + rng.randrange(2, 90)
        kind = i % 5
        if kind == 0:
            lines.append(f"{rng.choice(_WARS)} ({a}-{b}), volume {i}")
        elif kind == 1:
            lines.append(f"{rng.choice(_PEOPLE)} ({a}–{b}) worked on {rng.choice(_TOPICS)} (note {i}).")
        elif kind == 2:
            lines.append(f"Treaty of {rng.choice(['Paris', 'Utrecht', 'Vienna'])}, {a} #{i}")
        elif kind == 3:
            lines.append(f"{rng.choice(_TOPICS).capitalize()}: a field studied since {a}, entry {i}.")
        else:
            lines.append(f"Letters {a}-{b} of {rng.choice(_PEOPLE)}, item {i}")
    return lines


def _years(text: str) -> list[str]:
    return re.findall(r"\d{4}", text)


def test_line_per_document_file_of_short_lines_goes_through_with_defaults(tmp_path, capsys):
    lines = short_line_corpus(2400)
    assert len(set(lines)) == len(lines) and sum("(" in ln and "-" in ln for ln in lines) >= 400
    src = tmp_path / "titles.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["prepare", str(src), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "one document per line (--txt-docs auto)" in printed
    report = json.loads((out / "report.json").read_text())
    kept = [
        json.loads(x)["text"]
        for f in ("corpus.jsonl", "eval.jsonl")
        for x in (out / f).read_text().splitlines()
    ]
    assert report["docs_in"] == len(lines)
    assert len(kept) >= 0.95 * len(lines), report["stages"]
    assert report["pii_replacements"] == {}
    by_text = set(lines)
    assert all(t in by_text for t in kept)  # nothing scrubbed: every kept line is verbatim
    assert sum(len(_years(t)) for t in kept) >= 0.95 * sum(len(_years(t)) for t in lines)


def test_blank_mode_on_a_line_file_hints_at_txt_docs_line(tmp_path, capsys):
    src = tmp_path / "lines.txt"
    src.write_text("\n".join(short_line_corpus(300)) + "\n")
    argv = ["prepare", str(src), "--out", str(tmp_path / "o"), "--no-progress", "--txt-docs", "blank"]
    assert main([*argv, "--max-chars", "5000"]) == 1
    assert "--txt-docs line" in capsys.readouterr().err


def test_held_out_documents_reach_pretraining(tmp_path):
    from ptft_fast.train.config import TrainConfig
    from ptft_fast.train.data import prepare_run_data

    out = tmp_path / "prep"
    argv = ["prepare", "--embedded", "--out", str(out), "--tokenizer", "wordpiece", "--vocab-size", "600"]
    assert main([*argv, "--workers", "1", "--no-progress", "--eval-fraction", "0.1"]) == 0
    report = json.loads((out / "report.json").read_text())
    train = [json.loads(x)["text"] for x in (out / "corpus.jsonl").read_text().splitlines()]
    held = [json.loads(x)["text"] for x in (out / "eval.jsonl").read_text().splitlines()]
    assert len(held) == report["docs_eval"] == report["docs_out"] // 10 > 0
    assert not set(held) & set(train)
    data = prepare_run_data(TrainConfig(data=str(out), progress=False), "wordpiece", tmp_path / "run")
    assert not data.eval_is_train
    assert data.eval.num_docs == len(held) and data.train.num_docs == len(train)


def test_filter_presets():
    web, clean, none = (filter_preset(n) for n in ("web", "clean", "none"))
    title = "Seven Years' War (1756-1763)"
    assert quality_reason(title, clean) is None and quality_reason(title, none) is None
    assert quality_reason(title, web) == "too_few_words"
    page = " ".join(embedded_corpus()[5].split()[:400])
    assert quality_reason(page, clean) is None
    assert quality_reason("12 | 34.5 | 67 | 8.90 | 1,234 | 56 (total)", clean) == "low_alpha_ratio"
    prose = ("The cat sat on the mat and looked at the birds in the garden. " * 1).strip()
    many = (
        "The river rises in the hills north of the town and runs to the sea. In spring the water is high "
        "and the meadows flood. Farmers have learned to plant late, after the flood has gone. The old mill "
        "by the bridge was built in the last century and still grinds wheat. Children swim below the weir "
        "in summer when the current is slow. Herons wait at the edge of the reeds for fish. Visitors come "
        "to walk the path that follows the bank to the estuary. At night the sound of the water is all that "
        "can be heard."
    )
    assert quality_reason(many, web) is None
    assert quality_reason(many + " lorem ipsum dolor", web) == "c4_markers"
    assert quality_reason(prose + " " + "word " * 60, web) is not None
    no_stop = " ".join(w for w in many.split() if w.lower().strip(".,") not in STOP_WORDS)
    assert quality_reason(no_stop, web) == "few_stop_words"
    with pytest.raises(ValueError, match=r"clean\|web\|none"):
        filter_preset("strict")


def test_language_filter():
    keep = LanguageFilter(["en"])
    assert language_of("Der Hund läuft schnell über die Straße und bellt laut.") == "de"
    assert keep.keeps("The dog runs quickly across the street and barks loudly.")
    assert not keep.keeps("Le chien traverse la rue en courant et aboie fort.")
    with pytest.raises(ValueError, match="unknown code"):
        LanguageFilter(["english"])


def test_quality_classifier_prefers_reference_like_text():
    ref = embedded_corpus()
    train_ref, held_ref = ref[::2], ref[1::2]
    rng = random.Random(0)
    spam_words = ["buy", "cheap", "pills", "click", "here", "best", "price", "casino", "win", "free", "bonus"]
    spam = [" ".join(rng.choice(spam_words) for _ in range(120)) for _ in range(60)]
    clf = QualityClassifier(threshold=0.5).fit(train_ref, spam[:30] + held_ref[:5])
    good = clf.scores(held_ref[5:])
    bad = clf.scores(spam[30:])
    assert (good >= 0.5).mean() >= 0.9 and (bad < 0.5).mean() >= 0.9


def test_sentence_dedup_drops_repeated_sentences_only():
    d = SentenceDeduper()
    boiler = "We use cookies to improve your experience on this site."
    assert (
        d.dedup(f"{boiler} The first article is about rivers.")
        == f"{boiler} The first article is about rivers."
    )
    assert d.dedup(f"The second article covers mountains. {boiler}") == "The second article covers mountains."
    assert d.dedup(boiler) == ""
    assert d.dedup("Yes. Yes. Short ones stay.") == "Yes. Yes. Short ones stay."


def test_contamination_report_names_dirty_examples(tmp_path, capsys):
    corpus = embedded_corpus()
    words = corpus[3].split()
    leaked = " ".join(words[20:40])
    examples = [
        leaked,
        "an invented question about nothing that appears in any python documentation page ever",
    ]
    r = contamination(examples, corpus)
    assert [d["index"] for d in r.dirty] == [0] and r.share == 0.5 and r.checked == 2
    evalf = tmp_path / "eval.jsonl"
    evalf.write_text("".join(json.dumps({"q": e}) + "\n" for e in examples))
    out = tmp_path / "o"
    argv = ["prepare", "--embedded", "--out", str(out), "--no-progress", "--contamination", str(evalf)]
    assert main([*argv, "--contamination-field", "q"]) == 0
    saved = json.loads((out / "contamination.json").read_text())
    assert saved["share"] == 0.5 and saved["dirty"][0]["index"] == 0
    assert "1 of 2 checked eval examples (50.0%)" in capsys.readouterr().out

"""PII scrubbing: e-mail addresses, phone numbers and IP addresses → placeholders.

Every candidate a loose pattern finds is validated before it is replaced:

- phone numbers by ``phonenumbers`` (the Python port of Google's libphonenumber):
  ``PhoneNumberMatcher`` at leniency ``VALID`` — the number must exist in its country's numbering
  plan. Numbers written with ``+`` or ``00`` are checked against their own country; national
  numbers against ``regions`` (default: the US). A bare digit run with no separator and no ``+``
  ("12345678901") is an identifier more often than a phone and is left alone. Year ranges
  ("(1756-1763)"), dates, ISBNs, page ranges and prices are not valid numbers anywhere.
- IPv4/IPv6 by the standard library's :mod:`ipaddress`; a dotted quad right after a word such as
  "version", "v", "release" or "section" is a version or section number, not an address.
- e-mail addresses by the RFC 5321/1035 length and label rules (local part ≤ 64 characters, no
  leading, trailing or doubled dot; domain ≤ 253 characters, labels of letters, digits and inner
  hyphens ≤ 63, an alphabetic top-level label).

The precision/recall sets in ``tests/data/test_pii_sets.py`` measure it.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Sequence

import phonenumbers

EMAIL_PLACEHOLDER = "<EMAIL>"
PHONE_PLACEHOLDER = "<PHONE>"
IP_PLACEHOLDER = "<IP_ADDRESS>"
DEFAULT_REGIONS = ("US",)

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?!\w|:[\w:])"
)
_VERSION_WORD = re.compile(
    r"(?:(?:\b(?:v|ver|version|versions|release|build|rev|revision|section|sections|no|isbn)\.?|§)\s*)$",
    re.IGNORECASE,
)
# a stretch that could hold a phone number: >= 7 digits among digits and separators
_PHONE_GATE = re.compile(r"\+?\(?\d[\d\s().\-/–]{5,}\d")
_FILE_SUFFIXES = frozenset(
    [
        "png",
        "jpg",
        "jpeg",
        "gif",
        "svg",
        "webp",
        "bmp",
        "tif",
        "tiff",
        "ico",
        "pdf",
        "txt",
        "csv",
        "json",
        "html",
        "js",
        "css",
    ]
)
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_IDD_00 = re.compile(r"(?<![\w+])(?<!\d[\s.()-])00(?=[1-9]\d)")  # "00" opening a number


def valid_email(candidate: str) -> bool:
    """RFC 5321 size limits and RFC 1035 label syntax (no DNS lookup)."""
    local, _, domain = candidate.rpartition("@")
    if not local or len(local) > 64 or len(domain) > 253:
        return False
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    labels = domain.split(".")
    if labels[-1].lower() in _FILE_SUFFIXES:  # "icon@2x.png": a file name, no such top-level domain
        return False
    return all(_LABEL.match(label) for label in labels) and labels[-1].isalpha()


def valid_ipv4(candidate: str, before: str = "") -> bool:
    """A dotted quad :mod:`ipaddress` accepts (no leading zeros), not after a version word."""
    if _VERSION_WORD.search(before[-16:]):
        return False
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def valid_ipv6(candidate: str) -> bool:
    """An address :mod:`ipaddress` accepts with ≥ 3 groups ("::1", "a::b" are mostly code)."""
    if len([g for g in candidate.split(":") if g]) < 3:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def phone_spans(text: str, regions: Sequence[str] = DEFAULT_REGIONS) -> list[tuple[int, int]]:
    """(start, end) of every valid phone number in ``text``, sorted, not overlapping."""
    if not any(sum(c.isdigit() for c in m.group(0)) >= 7 for m in _PHONE_GATE.finditer(text)):
        return []
    # "0049 30 …": 00 is the international prefix of most of the world; read it as "+" (same length)
    seen = _IDD_00.sub(" +", text)
    spans: set[tuple[int, int]] = set()
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(seen, region, leniency=phonenumbers.Leniency.VALID):
            raw = m.raw_string.lstrip()
            if not raw.startswith("+") and not _grouped_as_phone(raw, region):
                continue
            start = m.start - (seen[m.start] == "+" and text[m.start] == "0")  # "00" → whole prefix
            spans.add((start, m.end))
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return merged


def _grouped_as_phone(raw: str, region: str) -> bool:
    """A national number (no "+") counts only when written in groups its country uses
    (libphonenumber's STRICT_GROUPING): "202-456-1111" yes; "2023-000451", "1 2 3 4 5 6 7 8 9 10"
    and a bare run of digits (an identifier more often than a phone) no."""
    if raw.isdigit():
        return False
    strict = phonenumbers.Leniency.STRICT_GROUPING
    return any(m.raw_string == raw for m in phonenumbers.PhoneNumberMatcher(raw, region, leniency=strict))


def scrub_pii(text: str, regions: Sequence[str] = DEFAULT_REGIONS) -> tuple[str, Counter]:
    """Replace validated PII in ``text``; returns (scrubbed text, Counter of replacements by kind).

    regions: ISO country codes whose national phone formats (no ``+``) are recognised."""
    counts: Counter = Counter()

    def emails(m: re.Match) -> str:
        if not valid_email(m.group(0)):
            return m.group(0)
        counts["email"] += 1
        return EMAIL_PLACEHOLDER

    def ipv6(m: re.Match) -> str:
        s = m.group(0)
        tail = ":" if s.endswith(":") and not s.endswith("::") else ""  # "from 2001:db8::1: ..."
        if not valid_ipv6(s[: len(s) - len(tail)]):
            return s
        counts["ipv6"] += 1
        return IP_PLACEHOLDER + tail

    def ipv4(m: re.Match) -> str:
        if not valid_ipv4(m.group(0), m.string[: m.start()]):
            return m.group(0)
        counts["ipv4"] += 1
        return IP_PLACEHOLDER

    text = _EMAIL.sub(emails, text)
    text = _IPV6.sub(ipv6, text)
    text = _IPV4.sub(ipv4, text)
    spans = phone_spans(text, regions)
    for s, e in reversed(spans):
        text = text[:s] + PHONE_PLACEHOLDER + text[e:]
    if spans:
        counts["phone"] += len(spans)
    return text, counts

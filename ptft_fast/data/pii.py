"""PII scrubbing: e-mail addresses, phone numbers and IP addresses → placeholders.

IP candidates found by a loose pattern are validated with :mod:`ipaddress`, so version numbers,
times ("12:30:45") and slices ("a[::2]") are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

EMAIL_PLACEHOLDER = "<EMAIL>"
PHONE_PLACEHOLDER = "<PHONE>"
IP_PLACEHOLDER = "<IP_ADDRESS>"

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?![\w:])"
)
# optional +country code, optional (area), then 3-4 / 3-4 [/ 3-4] digit groups; >= 7 digits checked below
_PHONE = re.compile(
    r"(?<![\w+/.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}[\s.-]\d{3,4}(?:[\s.-]\d{3,4})?(?![\w/]|[.-]\d)"
)


def _valid_ipv6(candidate: str) -> bool:
    groups = [g for g in candidate.split(":") if g]
    if len(groups) < 3:  # "::1", "1::2" and the like are more often code than addresses
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _valid_ipv4(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def scrub_pii(text: str) -> tuple[str, Counter]:
    """Replace PII in ``text``; returns (scrubbed text, Counter of replacements by kind)."""
    counts: Counter = Counter()

    def sub(pattern: re.Pattern, placeholder: str, kind: str, valid=None):
        def repl(m: re.Match) -> str:
            s = m.group(0)
            if kind == "phone" and sum(c.isdigit() for c in s) < 7:
                return s
            if valid is not None and not valid(s):
                return s
            counts[kind] += 1
            return placeholder

        return pattern.sub(repl, text)

    text = sub(_EMAIL, EMAIL_PLACEHOLDER, "email")
    text = sub(_IPV6, IP_PLACEHOLDER, "ipv6", _valid_ipv6)
    text = sub(_IPV4, IP_PLACEHOLDER, "ipv4", _valid_ipv4)
    text = sub(_PHONE, PHONE_PLACEHOLDER, "phone")
    return text, counts

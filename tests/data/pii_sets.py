"""Hand-labelled PII evaluation sets.

``NOT_PII``: sentences with numbers that look like PII and are not (years, year ranges, dates,
versions, ISBNs, prices, coordinates, times, page ranges, identifiers, scores, ...).
``PII``: (sentence, the PII substring) pairs in real formats: phone numbers of many countries as
people write them, e-mail addresses, IPv4 and IPv6 addresses.
"""

from __future__ import annotations

import itertools

_YEARS = [1066, 1492, 1756, 1789, 1809, 1848, 1914, 1939, 1969, 2001, 2024]
_RANGES = [
    (1756, 1763), (1809, 1882), (1914, 1918), (1939, 1945), (1861, 1865), (1618, 1648), (1337, 1453),
    (1803, 1815), (1950, 1953), (1955, 1975), (1870, 1871), (1642, 1727), (1564, 1616), (1685, 1750),
    (1879, 1955), (1732, 1799), (1770, 1827), (1904, 1989), (1926, 2022), (1452, 1519),
]  # fmt: skip
_RANGE_FORMS = ["({a}-{b})", "({a}–{b})", "{a}-{b}", "{a} - {b}", "({a}—{b})"]


def _not_pii() -> list[str]:
    out: list[str] = []
    for (a, b), form in itertools.product(_RANGES, _RANGE_FORMS):
        out.append(f"The war lasted {form.format(a=a, b=b)} and changed the map.")
    for a, b in _RANGES:
        out.append(f"Born in {a}, died in {b}; active {a + 10}-{b - 5}.")
    out += [f"In {y} the city grew." for y in _YEARS]
    out += [
        "The treaty was signed on 1763-02-10 in Paris.", "Meeting on 2023-01-15 at 12:30:45 UTC.",
        "Due 15/01/2023, paid 16/01/2023.", "Dated 01/15/2023 and 12/31/1999.", "Am 15.01.2023 um 14:30 Uhr.",
        "Timestamp 2024-03-05T14:22:01Z.", "Logged 2024-03-05 14:22:01.123456.", "On 5 March 2024, 09:00-17:00.",
        "The 2020/2021 season ended.", "Fiscal year 2019-20 closed.", "Q3 2023 revenue rose.",
        "Period 01.01.2020-31.12.2020 audited.", "Issue of 1999-12-31 reprinted.", "Week 2024-W09 started.",
        "Between 20230115 and 20231231 nothing changed.", "Open Mon-Fri 08:00-18:00.",
        "Published 12 Oct 2021 (updated 2022-04-30).", "From 1/1/2000 to 12/31/2000.",
    ]  # fmt: skip
    out += [
        "Python 3.11.7 and 3.10.2 are installed.", "Upgrade to version 4.1.2.3 now.", "Release v2.10.4 fixes it.",
        "Firmware 10.0.19041.1 ships.", "Chrome 120.0.6099.109 is current.", "Build 6.1.7601.17514 failed.",
        "Use numpy>=1.24.0,<2.0.0 here.", "Kernel 5.15.0-91-generic booted.", "Section 3.2.1.4 explains it.",
        "See §4.2.1.3 of the standard.", "Version 1.2.3.4 of the tool.", "tag v1.0.0-rc.1 was cut.",
        "The API moved from 2.7.18 to 3.12.1.", "SemVer 0.1.0-alpha.1+build.5 sorts first.",
        "LLVM 17.0.6 and GCC 13.2.0.", "The file format 7.3 MAT is HDF5 based.", "Version 2024.1.3 ships.",
    ]  # fmt: skip
    out += [
        "ISBN 978-3-16-148410-0 is on the cover.", "ISBN 0-306-40615-2 (paperback).", "ISBN-13: 978-0-262-03384-8.",
        "ISBN 978-1-4028-9462-6 was reissued.", "ISBN 0-19-852663-6 in print.", "ISBN 978-0-13-235088-4.",
        "ISSN 0317-8471 lists it.", "DOI 10.1000/182 resolves.", "doi:10.1038/nature12373 cited.",
        "arXiv:2112.11446 describes it.", "CAS 7732-18-5 is water.", "EC 231-791-2 is listed.",
        "Patent US 7,654,321 B2 granted.", "Order #123-4567890-1234567 shipped.", "Invoice 2023-000451 paid.",
        "SKU 4006381333931 in stock.", "EAN 5901234123457 scanned.", "UPC 036000291452 printed.",
        "Account ID 12345678901 was merged.", "Ticket 4815162342 closed.", "PMID 31452104 reviewed.",
        "ZIP 94105-1234 area.", "Postcode SW1A 1AA, London.", "Serial SN-2023-0045-7781.",
        "Case No. 2:19-cv-01234-ABC filed.", "Docket 21-1234 argued.", "Bug #45123 and #45124 fixed.",
        "Commit 3f2a9c1 reverted 9b8e7d6.", "UUID 123e4567-e89b-12d3-a456-426614174000 issued.",
        "Hash sha256:9f86d081884c7d65 checked.", "Model 6502-A and 8086-2 chips.", "Form 1040-SR filed.",
    ]  # fmt: skip
    out += [
        "It costs $1,234.56 today.", "Price: € 1.234,56 incl. VAT.", "Budget USD 12,345,678 approved.",
        "Sold for £2,500,000 in 1998.", "Total ¥ 123,456,789 spent.", "Rs. 12,34,567 collected.",
        "The GDP was 21,433,226 million.", "Population 1,234,567,890 in 2020.", "Up 12.5% to 3,456.78 points.",
        "Between $100-$200 per night.", "Costs 1 299,00 kr.", "Range 10,000-20,000 units.",
        "Revenue 123 456 789 EUR.", "Price 19.99-24.99 USD.", "Salary 55,000-65,000 per year.",
    ]  # fmt: skip
    out += [
        "Coordinates 48.8566, 2.3522 mark Paris.", "At 40.7128° N, 74.0060° W.", "Lat/long -33.8688, 151.2093.",
        "Point (51.5074, -0.1278) is London.", "Located 35.6762,139.6503.", "GPS 37.7749 -122.4194 logged.",
        "Elevation 8,848.86 m measured.", "Pi is 3.14159265358979.", "e = 2.718281828459045.",
        "Values 0.123 0.456 0.789 0.101 were read.", "Matrix [1 2 3; 4 5 6; 7 8 9].",
        "The constant 6.02214076e23 per mole.", "Speed 299 792 458 m/s.", "Result 1.2.3.4.5.6 nested.",
        "Grid ref 51°30′26″N 0°7′39″W.", "At 12.97, 77.59 the office is.", "Bearing 123.456.789 ok.",
    ]  # fmt: skip
    out += [
        "Run 12:30:45 finished.", "The train leaves at 23:59.", "Split 1:23:45.678 in the race.",
        "Lap 00:01:02.345 recorded.", "Ratio 16:9 and 4:3 screens.", "Score 3-2 after 2-2 at half time.",
        "John 3:16 is quoted.", "Genesis 1:1-2:3 read aloud.", "Slice a[::2] and b[1:10:2].",
        "Time 10:00-12:00, 13:00-17:00.", "Duration 1:02:03:04 days.", "The clock said 07:45:00.",
        "Mix 1:2:3 by volume.", "Port 8080:80 mapped.", "Ports 127:0:0:1 typed badly.",
    ]  # fmt: skip
    out += [
        "See pages 1234-1256.", "pp. 123-145 in vol. 12.", "Pages 1023–1047 of the report.",
        "Vol. 12(3):456-478.", "In: Nature 521:436-444 (2015).", "Proc. 2019, pp. 4171-4186.",
        "Lines 100-250 changed.", "Chapters 3-7 and 9-12.", "Rows 2,001-4,000 exported.",
        "Items 10001-20000 queued.", "Figure 3.2.1 and Table 4.5.6.", "J. Mach. Learn. Res. 21(140):1-67.",
        "Pages 1-1000 scanned.", "Volume 1001-1100 indexed.", "Verses 12:1-13:14 cited.",
    ]  # fmt: skip
    out += [
        "Temperature -40 to 85 degrees.", "Route 66 and I-95 meet nowhere.", "Flight LH 2024 departs.",
        "Room 1203, floor 12.", "Card 4 of 52 drawn.", "Model number 1234-5678 discontinued.",
        "Part 555-1234-A ordered.", "Code 202-456 was used.", "Rule 1-800 in the manual.",
        "Grid 100 200 300 400 500 600 drawn.", "Sequence 1 2 3 4 5 6 7 8 9 10.", "Digits 3 1 4 1 5 9 2 6 5.",
        "Lottery 7 14 21 28 35 42 drawn.", "Record 12 34 56 78 kept.", "Batch 99-88-77-66 tested.",
        "Dimensions 1920x1080 and 2560x1440.", "Ref 2023/45/678 noted.", "Size 210 x 297 mm.",
        "Weights 12.5 kg, 13.75 kg, 14.0 kg.", "Between 9.5 and 10.5 percent.",
        "Address 0x7ffd5a2b3c4d was freed.", "Offset 0x1234:0x5678 in memory.", "MAC 00:1A:2B:3C:4D:5E seen.",
        "Not an address: user at example dot com.", "The @ sign in @username mentions.",
        "Email-like a@b fails.", "Decorator @property.setter used.", "File name report@2x.png loaded.",
        "Version string 1.2.3@beta.", "Pattern [a-z]+@[a-z]+ matched.", "Import pkg@1.2.3 pinned.",
        "Values 300.400.500.600 invalid.", "Quad 256.1.1.1 is out of range.", "IP-like 01.02.03.04 padded.",
    ]  # fmt: skip
    return out


def _pii() -> list[tuple[str, str]]:
    phones = [
        "+1 202-456-1111", "(212) 736-3100", "212.736.3100", "1-800-275-2273", "+1 (650) 253-0000",
        "+1 416 967 1111", "+12024561111", "202-456-1111", "(617) 495-1000", "+1 312 744 5000",
        "+44 20 7946 0018", "+44 161 496 0000", "+44 7700 900123", "+44 (0)20 7323 8299", "+442079460018",
        "+49 30 901820", "+49 89 2190 4000", "+49 (0)30 2273 2152", "0049 30 2273 2152", "+49 151 23456789",
        "+33 1 44 55 66 77", "+33 6 12 34 56 78", "+33 (0)1 40 20 50 50", "+33140205050",
        "+34 91 123 45 67", "+34 612 34 56 78", "+39 06 6988 3145", "+39 347 123 4567",
        "+31 20 555 1234", "+31 6 12345678", "+32 2 123 45 67", "+41 44 668 18 00", "+43 1 53120",
        "+46 8 123 456 78", "+47 22 12 34 56", "+45 32 12 34 56", "+358 9 310 11", "+48 22 123 45 67",
        "+420 221 234 567", "+351 21 123 4567", "+353 1 234 5678", "+30 21 0123 4567", "+90 212 555 12 34",
        "+7 495 123-45-67", "+380 44 123 4567", "+36 1 234 5678", "+40 21 123 4567",
        "+81 3-1234-5678", "+81 90-1234-5678", "+82 2-312-3456", "+82 10-1234-5678", "+86 10 1234 5678",
        "+86 138 0013 8000", "+852 2123 4567", "+886 2 2345 6789", "+65 6123 4567", "+91 98765 43210",
        "+91 11 2345 6789", "+62 21 1234 5678", "+66 2 123 4567", "+63 2 8123 4567", "+60 3-1234 5678",
        "+84 24 3825 1234", "+92 21 3456 7890", "+880 2-9876543",
        "+61 2 9876 5432", "+61 412 345 678", "+64 9 123 4567", "+27 21 123 4567", "+234 803 123 4567",
        "+254 712 345678", "+20 2 2345 6789", "+212 522-123456", "+55 11 91234-5678", "+55 21 2345-6789",
        "+52 55 1234 5678", "+54 11 4123-4567", "+56 2 2123 4567", "+57 601 234 5678", "+51 1 234 5678",
        "+972 3-123-4567", "+971 4 234 5678", "+966 11 123 4567", "+1 604 555 0100",
    ]  # fmt: skip
    phone_templates = ["Call {} today.", "Tel.: {}", "Contact us at {} or by mail.", "(phone {})"]
    emails = [
        "jane.doe@example.com", "john_smith+news@mail.example.org", "a.b-c@sub.domain.co.uk",
        "info@museum.fr", "first.last@university.edu", "user123@gmail.com", "x@y.io",
        "support-team@company.de", "o'brien@example.ie".replace("'", ""), "name%tag@host.example.net",
        "CAPS.User@Example.COM", "sales@shop-online.com.au", "dev.ops@ci.internal.example",
        "h.mueller@uni-heidelberg.de", "li.wei@tsinghua.edu.cn", "contact@xn--bcher-kva.example",
        "noreply@notifications.github.com", "a1.b2.c3@d4.e5.info", "press@who.int", "ceo@startup.ai",
    ]  # fmt: skip
    email_templates = ["Write to {}.", "<{}>", "mail: {}, thanks", "({})"]
    ipv4 = [
        "192.168.10.1", "10.0.0.1", "172.16.254.1", "8.8.8.8", "203.0.113.45", "198.51.100.7",
        "127.0.0.1", "255.255.255.0", "1.1.1.1", "100.64.0.10", "169.254.1.2", "93.184.216.34",
    ]  # fmt: skip
    ipv6 = [
        "2001:db8:85a3::8a2e:370:7334", "2001:0db8:0000:0000:0000:ff00:0042:8329", "fe80::1ff:fe23:4567:890a",
        "2606:4700:4700::1111", "2001:4860:4860::8888", "::ffff:192.0.2.128", "fd12:3456:789a:1::1",
        "2001:db8::1:0:0:1",
    ]  # fmt: skip
    ip_templates = ["Host {} is down.", "from {}:", "ping {} failed"]
    out = [(t.format(p), p) for p, t in zip(phones, itertools.cycle(phone_templates))]
    out += [(t.format(e), e) for e in emails for t in email_templates[:2]]
    out += [(t.format(a), a) for a in ipv4 + ipv6 for t in ip_templates[:2]]
    return out


NOT_PII = _not_pii()
PII = _pii()

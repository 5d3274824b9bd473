"""Personal data found by pattern and checksum: emails, phone numbers, payment cards, IBANs and
national ids. A regex proposes candidates; a checksum or a numbering plan decides, so that an
order number or a tracking id that merely looks like a card is not reported."""
import re
from collections.abc import Iterator

import phonenumbers
from stdnum import iban, luhn
from stdnum.es import dni
from stdnum.exceptions import ValidationError
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.us import ssn

from meshllm.api.moderation.v1 import moderation_pb2
from services.moderation.findings import Finding

PERSONAL_DATA = moderation_pb2.CATEGORY_PERSONAL_DATA

EMAIL = re.compile(
    r"(?:(?<![\w.+/:-])|(?<=mailto:))[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b")
"""Not after "//" or ":": `https://token@github.com` and `postgres://user:pw@host` hold
credentials (the secrets detector's), not an address."""

CARD_CANDIDATE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
"""13 to 19 digits, maybe grouped by single spaces or dashes; Luhn and the brand prefix decide."""

CARD_PREFIXES = re.compile(
    r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|35|6(?:011|5|4[4-9]|2)")
"""Issuer prefixes of Visa, Mastercard, Amex, Diners, JCB, Discover and UnionPay. A Luhn-valid
number under another prefix (a 13-digit millisecond timestamp starting with 1) is not a card."""

IBAN_CANDIDATE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}\b")

def standalone(pattern: str) -> re.Pattern:
    """`pattern` where it is not a piece of a longer number or code: twelve digits of an
    Aadhaar number are not the first twelve of a sixteen-digit order number."""
    return re.compile(rf"(?<![\w-])(?<!\d )(?:{pattern})(?![\w-])(?! \d)")


SSN = standalone(r"\d{3}([- ])\d{2}\1\d{4}")
SSN_UNDASHED = re.compile(
    r"\b(?:ssn|social security(?: number| no\.?)?)\W{0,5}(?:is\W{0,3})?(\d{9})\b", re.IGNORECASE)
SSN_ADVERTISED = {"123456789", "219099999", "078051120"}
"""Numbers printed in advertisements and on sample cards; stdnum knows only the last one."""

NINO = standalone(r"(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
                  r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]")
"""A UK National Insurance number: two prefix letters (some never issued), six digits, A–D."""

NATIONAL_ID_CANDIDATES: tuple[tuple[str, re.Pattern, object], ...] = (
    ("es.dni", standalone(r"\d{8}-?[A-Z]"), dni),
    ("it.codicefiscale", standalone(r"[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]"), codicefiscale),
    ("fr.nir", standalone(r"[12] ?\d{2} ?\d{2} ?\d{2} ?\d{3} ?\d{3} ?\d{2}"), nir),
    ("in.aadhaar", standalone(r"[2-9]\d{3} \d{4} \d{4}"), aadhaar),
)
"""Ids whose checksum stdnum validates; the regex keeps to each id's usual written form."""

PHONE_REGIONS = ("US", "GB")
"""Regions a number without a +country prefix is read in; +XX numbers parse in any of them."""
PHONE_CANDIDATE = re.compile(
    r"(?<![\w.+-])(?:\+|00)?\(?\d[\d\s().-]{5,22}\d(?![\w-]|:\w)")
"""Seven or more digits with phone separators. phonenumbers costs ~0.15 ms a candidate and
region, so it reads only these candidates, not the whole text."""
PHONE_CANDIDATES_READ = 200
"""At most this many candidates a text go to phonenumbers (~60 ms): a 256 KiB table of digits
would otherwise cost seconds. Past it the text is a list of numbers, and the rest is not read."""
NOT_A_PHONE = re.compile(
    r"\d{4}-\d\d-\d\d|\d\d?[/.]\d\d?[/.]\d{2,4}|\d\d?:\d\d|(?<!\d)\d{1,2}\.\d{1,3}\.\d")
"""Dates, times and versions, which a candidate may hold but a phone number does not."""
PHONE_CONTEXT = re.compile(
    r"\b(?:phone|tel|telephone|call|calling|mobile|cell|cellphone|text|whatsapp|ring|fax|sms"
    r"|contact|reach)\b", re.IGNORECASE)
"""Words that make a bare run of ten digits a phone number rather than an order number."""
PHONE_CONTEXT_BEFORE = 40
DIGIT = re.compile(r"\d")
GLUED_BEFORE = re.compile(r"\w-?$")
GLUED_AFTER = re.compile(r"-?\w")


class PersonalDataDetector:
    """Finds personal data spans in a text."""

    def find(self, text: str) -> list[Finding]:
        return [*emails(text), *cards(text), *ibans(text), *national_ids(text), *phones(text)]


def finding(start: int, end: int, detector: str, label: str, score: float = 1.0) -> Finding:
    return Finding(PERSONAL_DATA, start, end, score, detector, label)


def emails(text: str) -> Iterator[Finding]:
    if "@" not in text:
        return
    for match in EMAIL.finditer(text):
        yield finding(match.start(), match.end(), "rules/email", "EMAIL")


def cards(text: str) -> Iterator[Finding]:
    for match in CARD_CANDIDATE.finditer(text):
        raw = match.group()
        if " " in raw and "-" in raw:
            continue  # mixed separators: a list of numbers, not one card
        digits = raw.replace(" ", "").replace("-", "")
        if CARD_PREFIXES.match(digits) and luhn.is_valid(digits):
            yield finding(match.start(), match.end(), "rules/luhn", "CARD_NUMBER")


def ibans(text: str) -> Iterator[Finding]:
    for match in IBAN_CANDIDATE.finditer(text):
        # The candidate may run into a following code ("... 32 HTTP"): shorten group by group.
        candidate = match.group()
        while candidate:
            if iban.is_valid(candidate):
                yield finding(match.start(), match.start() + len(candidate), "rules/iban", "IBAN")
                break
            candidate = re.sub(r" ?[A-Z0-9]{1,4}$", "", candidate) if " " in candidate else ""


def national_ids(text: str) -> Iterator[Finding]:
    yield from us_ssns(text)
    for match in NINO.finditer(text):
        yield finding(match.start(), match.end(), "rules/nino", "NATIONAL_ID", 0.9)
    for name, pattern, module in NATIONAL_ID_CANDIDATES:
        for match in pattern.finditer(text):
            if module.is_valid(match.group()):
                yield finding(match.start(), match.end(), f"rules/stdnum:{name}", "NATIONAL_ID")


def us_ssns(text: str) -> Iterator[Finding]:
    for match in SSN.finditer(text):
        if valid_ssn(match.group()):
            yield finding(match.start(), match.end(), "rules/ssn", "NATIONAL_ID", 0.9)
    # Nine bare digits are an SSN only when the text says so.
    for match in SSN_UNDASHED.finditer(text):
        if valid_ssn(match.group(1)):
            yield finding(match.start(1), match.end(1), "rules/ssn", "NATIONAL_ID", 0.9)


def valid_ssn(raw: str) -> bool:
    try:
        number = ssn.validate(raw.replace(" ", "-"))
    except ValidationError:
        return False
    return number not in SSN_ADVERTISED


def phones(text: str) -> Iterator[Finding]:
    read = 0
    for candidate in PHONE_CANDIDATE.finditer(text):
        raw = candidate.group()
        if len(DIGIT.findall(raw)) < 7 or NOT_A_PHONE.search(raw):
            continue
        if raw.isdigit() and not PHONE_CONTEXT.search(
                text, max(candidate.start() - PHONE_CONTEXT_BEFORE, 0), candidate.start()):
            continue
        read += 1
        if read > PHONE_CANDIDATES_READ:
            return
        seen: set[int] = set()
        for region in PHONE_REGIONS:
            for match in phonenumbers.PhoneNumberMatcher(raw, region):
                start, end = candidate.start() + match.start, candidate.start() + match.end
                if start in seen or part_of_a_longer_code(text, start, end):
                    continue
                seen.add(start)
                yield finding(start, end, "rules/phone", "PHONE", 0.9)


def part_of_a_longer_code(text: str, start: int, end: int) -> bool:
    """True for "800-555-0199-X" or "SKU-415-555-0199": a product code, not a phone number."""
    glued_before = GLUED_BEFORE.search(text, max(start - 2, 0), start)
    return bool(glued_before or GLUED_AFTER.match(text, end, end + 2))

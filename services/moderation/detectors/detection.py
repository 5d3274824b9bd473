"""Every rule detector over one text: the cheap pass that runs on all text; the classifier
runs after it, and only where the caller asks for it."""
from itertools import groupby

from meshllm.api.moderation.v1 import moderation_pb2
from services.moderation.detectors.injection import InjectionDetector
from services.moderation.detectors.lexicon import LexiconDetector
from services.moderation.detectors.personal_data import PersonalDataDetector
from services.moderation.detectors.secrets import SecretDetector
from services.moderation.findings import Finding

PERSONAL_DATA = moderation_pb2.CATEGORY_PERSONAL_DATA
SECRETS = moderation_pb2.CATEGORY_SECRETS


class RuleDetectors:
    """Personal data, secrets, lexicons and injection phrases; regexes compiled once here."""

    def __init__(self) -> None:
        self._detectors = (PersonalDataDetector(), SecretDetector(), LexiconDetector(),
                           InjectionDetector())

    def find(self, text: str) -> list[Finding]:
        """All findings in `text`, by start; overlapping findings of one category merged."""
        findings = [f for detector in self._detectors for f in detector.find(text)]
        return sorted(merge_overlaps(without_parts_of_secrets(findings)),
                      key=lambda f: (f.start, f.end, f.category))


def without_parts_of_secrets(findings: list[Finding]) -> list[Finding]:
    """Drops personal data that overlaps a secret: the digits of a Telegram bot token are not a
    phone number, nor is `pw@host` of `postgres://user:pw@host` an email address."""
    secrets = [(f.start, f.end) for f in findings if f.category == SECRETS]
    return [f for f in findings
            if f.category != PERSONAL_DATA
            or not any(f.start < end and start < f.end for start, end in secrets)]


def merge_overlaps(findings: list[Finding]) -> list[Finding]:
    """One finding per overlapping run of a category: the run's whole span, scored, named and
    labelled as its strongest member (a card number that phonenumbers also read as a phone
    number stays one CARD_NUMBER span)."""
    merged = []
    by_category = sorted(findings, key=lambda f: (f.category, f.start, -f.end))
    for _, same_category in groupby(by_category, key=lambda f: f.category):
        run: list[Finding] = []
        for finding in same_category:
            if run and finding.start >= max(f.end for f in run):
                merged.append(one_of(run))
                run = []
            run.append(finding)
        merged.append(one_of(run))
    return merged


def one_of(run: list[Finding]) -> Finding:
    strongest = max(run, key=lambda f: (f.score, f.end - f.start))
    start, end = min(f.start for f in run), max(f.end for f in run)
    return Finding(strongest.category, start, end, strongest.score, strongest.detector,
                   strongest.label)

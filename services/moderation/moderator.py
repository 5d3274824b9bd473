"""Judging text under a tenant's rules: detectors cheapest first, then the policy's action for
each finding, then redaction.

The rule detectors (patterns, validators, lexicons) run on every text. The classifier, which
costs milliseconds of CPU per text, runs on every input, and on output only where the rules
saw a candidate (a weak lexicon term or injection phrase below its threshold) unless the
service is told to classify all output: on this machine classifying every window of 64
streams would take more CPU than the machine has."""
import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.moderation_policy import ModerationRules
from services.moderation.classifier_queue import ClassifierQueue
from services.moderation.findings import CLASSIFIED_CATEGORIES, Finding

CLASSIFIER_DETECTOR = "classifier/minilm"
BLOCKLIST_DETECTOR = "rules/blocklist"
_JUDGED_BY_MEANING = frozenset(CLASSIFIED_CATEGORIES)
_SENTENCE_ENDS = (". ", "? ", "! ", "\n")
CLASSIFIER_SPAN_CHARS = 400
"""About 100 tokens of English: under the 128 the classifier reads of one text."""


@dataclass(frozen=True)
class Decision:
    """A finding the policy acts on (never ALLOW)."""

    finding: Finding
    action: int

    def verdict(self, offset: int = 0) -> m.Verdict:
        finding = self.finding
        return m.Verdict(category=finding.category, action=self.action,
                         detector=finding.detector, score=round(finding.score, 4),
                         start=max(0, finding.start - offset), end=max(0, finding.end - offset))


@dataclass
class Judgement:
    text: str
    """The text as it may go on: redactions applied; empty when blocked."""
    decisions: list[Decision]
    action: int
    """The strongest action (ALLOW < FLAG < REDACT < BLOCK, as the enum orders them)."""


def strongest(decisions: Sequence[Decision]) -> int:
    return max((decision.action for decision in decisions), default=m.ACTION_ALLOW)


def redacted(text: str, decisions: Sequence[Decision], end: int | None = None) -> str:
    """`text[:end]` with every REDACT span replaced by its placeholder; overlapping spans
    become one."""
    end = len(text) if end is None else end
    spans = sorted((d.finding.start, d.finding.end, d.finding.label or "REDACTED")
                   for d in decisions if d.action == m.ACTION_REDACT and d.finding.start < end)
    out, position = [], 0
    for start, stop, label in spans:
        start = max(start, position)
        if stop <= position:
            continue
        out.append(text[position:start])
        out.append(f"[{label}]")
        position = stop
    out.append(text[position:end])
    return "".join(out)


def classifier_spans(text: str, size: int = CLASSIFIER_SPAN_CHARS) -> list[tuple[int, int]]:
    """`text` in pieces the classifier reads whole (it truncates at 128 tokens), cut after a
    sentence or word where one is near, so a long prompt is judged all the way through."""
    spans, start = [], 0
    while len(text) - start > size:
        piece = text[start:start + size]
        cut = max(piece.rfind(end) + len(end) for end in _SENTENCE_ENDS)
        if cut < size // 2:
            cut = piece.rfind(" ") + 1
        end = start + (cut if cut > 0 else size)
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    return spans


def blocklist_findings(text: str, terms: Sequence[str]) -> list[Finding]:
    lowered = text.lower()
    found = []
    for term in terms:
        for match in re.finditer(re.escape(term), lowered):
            found.append(Finding(m.CATEGORY_BLOCKLIST, match.start(), match.end(), 1.0,
                                 BLOCKLIST_DETECTOR, "BLOCKED"))
    return found


class Moderator:
    def __init__(self, rule_findings: Callable[[str], list[Finding]],
                 classifier: ClassifierQueue | None, classify_all_output: bool = False):
        self._rule_findings = rule_findings
        self._classifier = classifier
        self._classify_all_output = classify_all_output

    async def findings(self, text: str, rules: ModerationRules, stage: int) -> list[Finding]:
        """Every finding in `text`, from the rules and, where it is worth its cost, the
        classifier (a finding over the whole text)."""
        found = self._rule_findings(text)
        if rules.blocklist:
            found.extend(blocklist_findings(text, rules.blocklist))
        if self._classifier is not None and text.strip() and self._worth_classifying(
                found, rules, stage):
            spans = classifier_spans(text)
            scored = await asyncio.gather(*(self._classifier.scores(text[start:end])
                                            for start, end in spans))
            for (start, end), scores in zip(spans, scored):
                found.extend(Finding(category, start, end, score, CLASSIFIER_DETECTOR)
                             for category, score in scores.items())
        return found

    def _worth_classifying(self, found: list[Finding], rules: ModerationRules,
                           stage: int) -> bool:
        if stage == m.STAGE_INPUT or self._classify_all_output:
            return True
        return any(f.category in _JUDGED_BY_MEANING
                   and f.score < rules.threshold(f.category, stage) for f in found)

    @staticmethod
    def decide(found: Sequence[Finding], rules: ModerationRules, stage: int) -> list[Decision]:
        """The findings the policy acts on, each with its action; for one category found by
        several detectors over the same span, the highest score decides."""
        decisions = []
        for finding in found:
            action = rules.action_for(finding.category, stage, finding.score)
            if action != m.ACTION_ALLOW:
                decisions.append(Decision(finding, action))
        return _strongest_per_span(decisions)

    async def judge(self, text: str, rules: ModerationRules, stage: int) -> Judgement:
        decisions = self.decide(await self.findings(text, rules, stage), rules, stage)
        action = strongest(decisions)
        return Judgement("" if action == m.ACTION_BLOCK else redacted(text, decisions),
                         decisions, action)


def _strongest_per_span(decisions: list[Decision]) -> list[Decision]:
    best: dict[tuple[int, int, int], Decision] = {}
    for decision in decisions:
        finding = decision.finding
        key = (finding.category, finding.start, finding.end)
        if key not in best or finding.score > best[key].finding.score:
            best[key] = decision
    return sorted(best.values(), key=lambda d: (d.finding.start, d.finding.end))

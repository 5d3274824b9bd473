"""One generation's output as moderation sees it: windows in, text safe to release out.

Nothing leaves before it was judged, and nothing is judged in pieces that a detector needs
whole. Each window is judged together with the text held back so far and a tail of what was
released (so a phrase across windows is seen); of that, only the part that cannot be the start
of something longer is released: the last word (it may go on), a trailing run of digit groups
(a card number, phone number or IBAN arriving group by group) and an unterminated private key
block stay held until the text after them shows where they end, or the stream ends."""
import re
from dataclasses import dataclass, field, replace

from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.moderation_policy import ModerationRules
from services.moderation.moderator import (
    CLASSIFIER_DETECTOR, Decision, Moderator, redacted, strongest,
)

CONTEXT_CHARS = 64
"""Released text judged again with the next window, so that a phrase across two windows is
seen: a dozen words (entities need none: they are held back whole)."""
MAX_HELD_CHARS = 8192
"""Past this much held text the oldest part is released anyway (a word with no end)."""
_PRIVATE_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PRIVATE_KEY_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
# Groups of up to 6 digits, capitals or phone punctuation, each followed by one space or dash,
# at the end of the text, with a digit among them: "4111 1111 1111 ", "GB82 WEST 1234 ".
_TRAILING_GROUPS = re.compile(r"(?:[0-9A-Z()+.\-]{1,6}[ \-])+$")
_MAX_GROUP_RUN = 48


def release_point(held: str) -> int:
    """How much of `held` may be released (judged) now; the rest waits for more text."""
    begin = None
    for begin in _PRIVATE_KEY_BEGIN.finditer(held):
        pass
    if begin is not None and not _PRIVATE_KEY_END.search(held, begin.end()):
        return begin.start()
    cut = max(held.rfind(" "), held.rfind("\n"), held.rfind("\t")) + 1
    groups = _TRAILING_GROUPS.search(held, max(0, cut - _MAX_GROUP_RUN), cut)
    if groups is not None and any(char.isdigit() for char in groups.group()):
        cut = groups.start()
    if len(held) - cut > MAX_HELD_CHARS:
        cut = len(held) - MAX_HELD_CHARS
    return cut


@dataclass
class WindowVerdict:
    release: str
    decisions: list[Decision]
    action: int
    offset: int = 0
    """Where the released text starts in the judged text (verdict spans are relative to it)."""
    held_chars: int = 0

    def to_proto(self) -> m.ModerateStreamResponse:
        return m.ModerateStreamResponse(
            release=self.release, action=self.action, held_chars=self.held_chars,
            verdicts=[decision.verdict(self.offset) for decision in self.decisions])


@dataclass
class OutputWindow:
    moderator: Moderator
    rules: ModerationRules
    held: str = ""
    context: str = ""
    _flagged: set = field(default_factory=set)

    async def judge(self, text: str, end: bool) -> WindowVerdict:
        held = self.held + text
        cut = len(held) if end else release_point(held)
        judged = self.context + held
        offset = len(self.context)
        found = await self.moderator.findings(judged, self.rules, m.STAGE_OUTPUT)
        decisions = []
        for decision in self.moderator.decide(found, self.rules, m.STAGE_OUTPUT):
            finding = decision.finding
            if finding.end <= offset:
                continue  # judged and released with an earlier window
            if decision.action == m.ACTION_BLOCK:
                return WindowVerdict("", [decision], m.ACTION_BLOCK, offset)
            whole_window = finding.detector == CLASSIFIER_DETECTOR
            if decision.action == m.ACTION_REDACT and not whole_window \
                    and finding.start - offset < cut < finding.end - offset:
                cut = max(0, finding.start - offset)  # a span leaves whole or not at all
            decisions.append(decision)
        released = []
        for decision in decisions:
            finding = decision.finding
            if finding.start - offset >= cut:
                continue  # found again when the text after it arrives
            key = (finding.category, finding.detector)
            if finding.detector == CLASSIFIER_DETECTOR and key in self._flagged:
                continue  # one event per stream for what the classifier sees in the context
            self._flagged.add(key)
            released.append(decision)
        release = redacted(judged, _clipped(released, offset), offset + cut)[offset:] \
            if released else held[:cut]
        self.held = held[cut:]
        self.context = (self.context + release)[-CONTEXT_CHARS:]
        return WindowVerdict(release, released, strongest(released), offset, len(self.held))


def _clipped(decisions: list[Decision], offset: int) -> list[Decision]:
    """Released text cannot be taken back: a redaction reaches back no further than `offset`,
    and the classifier's whole-text finding redacts only the new text."""
    clipped = []
    for decision in decisions:
        finding = decision.finding
        if finding.start < offset:
            finding = replace(finding, start=offset)
        clipped.append(Decision(finding, decision.action))
    return clipped

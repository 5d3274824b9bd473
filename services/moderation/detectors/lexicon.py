"""Harmful content found by phrase: one lexicon a category, kept as data in lexicons/.

A strong phrase ("how to make a pipe bomb") scores near 1 and decides on its own. A weak trigger
("bomb") scores below the default threshold: alone it decides nothing, but it tells the caller
that the text deserves the classifier. A zero-weight line names a benign look-alike ("kill the
process"); a finding inside one is dropped, so the look-alike does not even ask for the
classifier.

File format, one pattern a line: `<weight> <regex>`; `#` starts a comment line. Patterns match
case-insensitively at word boundaries, and a space in a pattern (not an optional " ?") matches
any run of whitespace.
`$name = <regex>` defines a piece that later patterns use as `$name` (a list of groups, say)."""
import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.moderation_policy import HARMFUL, word_for
from services.moderation.detectors.anchors import AnchoredPatterns
from services.moderation.findings import Category, Finding

LEXICON_DIRECTORY = Path(__file__).parent / "lexicons"


@dataclass(frozen=True)
class LexiconEntry:
    weight: float
    pattern: str


def category_name(category: Category) -> str:
    """CATEGORY_SELF_HARM → "self_harm": how lexicon and exemplar files and the labelled set
    name a category."""
    return word_for(moderation_pb2.Category, category)


DEFINITION = re.compile(r"\$(?P<name>\w+) = (?P<regex>.+)")
REFERENCE = re.compile(r"\$(\w+)")


def read_lexicon(path: Path) -> list[LexiconEntry]:
    entries, pieces = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = REFERENCE.sub(lambda m: pieces.get(m.group(1), m.group()), line)
        if definition := DEFINITION.fullmatch(line):
            pieces[definition["name"]] = definition["regex"]
            continue
        weight, _, pattern = line.partition(" ")
        try:
            entries.append(LexiconEntry(float(weight), pattern.strip()))
        except ValueError:
            raise ValueError(f"{path}:{number}: a line is '<weight> <pattern>', got {line!r}")
    return entries


BLANK = re.compile(r" (?![?*])")


def spaced(pattern: str) -> str:
    return BLANK.sub(r"\\s+", pattern)


def compile_pattern(pattern: str) -> re.Pattern:
    return re.compile(rf"(?<!\w)(?:{spaced(pattern)})(?!\w)", re.IGNORECASE)


class LexiconDetector:
    """Finds lexicon phrases of every harmful category in a text."""

    def __init__(self, directory: Path = LEXICON_DIRECTORY) -> None:
        # Every category's phrases in one list; a phrase's category and weight by its index.
        self._phrases: list[tuple[Category, float]] = []
        self._look_alikes: dict[Category, list[re.Pattern]] = {}
        regexes = []
        for category in HARMFUL:
            entries = read_lexicon(directory / f"{category_name(category)}.txt")
            for entry in sorted(entries, key=lambda e: -e.weight):
                if entry.weight:
                    self._phrases.append((category, entry.weight))
                    regexes.append(compile_pattern(entry.pattern))
            self._look_alikes[category] = [
                compile_pattern(e.pattern) for e in entries if not e.weight]
        self._patterns = AnchoredPatterns(regexes)

    def find(self, text: str) -> list[Finding]:
        findings = []
        look_alikes: dict[Category, Spans] = {}
        for index in self._patterns.candidates(text):
            category, weight = self._phrases[index]
            for match in self._patterns.regexes[index].finditer(text):
                if category not in look_alikes:
                    look_alikes[category] = Spans(
                        m.span() for regex in self._look_alikes[category]
                        for m in regex.finditer(text))
                if not look_alikes[category].cover(*match.span()):
                    findings.append(Finding(category, match.start(), match.end(), weight,
                                            "rules/lexicon", category_name(category).upper()))
        return findings


class Spans:
    """Where a category's benign look-alikes ("kill the process") are in a text, merged and
    sorted so that a thousand findings ask in log time. Found only once a phrase of the
    category matched, so rarely."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(spans):
            if self._ends and start <= self._ends[-1]:
                self._ends[-1] = max(self._ends[-1], end)
            else:
                self._starts.append(start)
                self._ends.append(end)

    def cover(self, start: int, end: int) -> bool:
        at = bisect.bisect_right(self._starts, start) - 1
        return at >= 0 and end <= self._ends[at]

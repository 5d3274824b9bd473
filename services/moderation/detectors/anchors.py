"""Anchors: literal words that a regex cannot match without, so that a cheap substring test
can skip the regex on most texts.

Python's `re` tries every branch of an alternation at every position, so a lexicon of a few
hundred phrases costs milliseconds a text. Most texts contain none of a phrase's words; testing
`word in text.casefold()` for a handful of anchors first keeps the rule pass well under a
millisecond."""
import re
from re import _constants as sre  # the parser's opcodes; stable across 3.11–3.13
from re import _parser as sre_parse

MIN_ANCHOR = 3
"""Shorter literals ("a", "to") are in nearly every text and would gate nothing."""

Anchors = frozenset[str] | None
"""A set of casefolded strings of which every match contains one; None where there is none."""


def anchors(pattern: str) -> Anchors:
    """The best anchor set of `pattern` (compiled case-insensitively), or None."""
    return _sequence(sre_parse.parse(pattern, re.IGNORECASE))


def _sequence(items) -> Anchors:
    candidates: list[frozenset[str]] = []
    literal = ""
    for op, value in items:
        if op is sre.LITERAL:
            literal += chr(value).casefold()
            continue
        if len(literal) >= MIN_ANCHOR:
            candidates.append(frozenset({literal}))
        literal = ""
        found = _item(op, value)
        if found:
            candidates.append(found)
    if len(literal) >= MIN_ANCHOR:
        candidates.append(frozenset({literal}))
    return max(candidates, key=_selectivity, default=None)


def _item(op, value) -> Anchors:
    if op is sre.SUBPATTERN:
        return _sequence(value[-1])
    if op is sre.BRANCH:
        branches = [_sequence(branch) for branch in value[1]]
        if all(branches):
            return frozenset().union(*branches)
        return None
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and value[0] >= 1:
        return _sequence(value[2])
    return None  # a class, a lookaround, an optional part: nothing it must contain


COMMON_WORDS = frozenset("""
    the and for are but not you all any can had her was one our out day get has him his how man
    new now old see two way who did its let put say she too use with have this will your from
    they know want been good much some time very when come here just like long make many more
    only over such take than them well were what that into most about also back after could
    would there their which other these those first should people going because really
    through before where while being every still might never again under always
    """.split())
"""Words in most texts: an anchor set that holds one gates little."""


def _selectivity(candidate: frozenset[str]) -> tuple[bool, int, int]:
    """Uncommon and longer words are rarer; fewer of them are tested faster."""
    return (not candidate & COMMON_WORDS, min(len(word) for word in candidate),
            -len(candidate))


class AnchoredPatterns:
    """Many regexes, and which of them can match a text: those with an anchor in it (or with no
    anchor at all). One substring scan over every anchor replaces a test per regex."""

    def __init__(self, regexes: list[re.Pattern]) -> None:
        self.regexes = regexes
        self._always: list[int] = []
        self._by_anchor: dict[str, list[int]] = {}
        for index, regex in enumerate(regexes):
            anchor_set = anchors(regex.pattern)
            if anchor_set is None:
                self._always.append(index)
            for word in anchor_set or ():
                self._by_anchor.setdefault(word, []).append(index)
        # Anchors by their first three characters (every anchor has at least MIN_ANCHOR): a
        # text holds an anchor only if it holds its first three characters, so one pass over
        # the text's trigrams leaves a few anchors to test out of hundreds.
        self._by_trigram: dict[str, list[str]] = {}
        for word in self._by_anchor:
            self._by_trigram.setdefault(word[:MIN_ANCHOR], []).append(word)

    def candidates(self, text: str) -> list[int]:
        """Indexes of the regexes that may match `text`, in order."""
        # casefold, not lower: IGNORECASE matches "ſ" (long s) as "s"; casefold does too.
        lowered = text.casefold()
        trigrams = {lowered[i:i + MIN_ANCHOR] for i in range(len(lowered) - MIN_ANCHOR + 1)}
        chosen = set(self._always)
        for trigram in trigrams & self._by_trigram.keys():
            for word in self._by_trigram[trigram]:
                if word in lowered:
                    chosen.update(self._by_anchor[word])
        return sorted(chosen)

"""How well detection agrees with a labelled set: per-category precision and recall, and how
often benign text is flagged at all. Shared by the unit test that guards the numbers and by
`python -m bench.moderation_quality`, which prints them."""
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.moderation_policy import HARMFUL
from services.moderation.detectors.detection import RuleDetectors
from services.moderation.detectors.lexicon import category_name
from services.moderation.findings import Category, Finding

if TYPE_CHECKING:  # the classifier module imports torch, which a rules-only caller never needs
    from services.moderation.detectors.classifier import ExemplarClassifier

LABELLED_CATEGORIES: tuple[str, ...] = tuple(category_name(c) for c in (
    *HARMFUL, moderation_pb2.CATEGORY_PERSONAL_DATA, moderation_pb2.CATEGORY_SECRETS,
    moderation_pb2.CATEGORY_PROMPT_INJECTION))
"""The categories a labelled example may name, as it names them."""

DEFAULT_THRESHOLD = 0.5
"""The score from which a finding counts, as a policy with no threshold of its own."""


@dataclass(frozen=True)
class LabelledExample:
    text: str
    categories: frozenset[str]
    """Lowercase category names ("personal_data"); empty for benign text."""
    chunks: tuple[str, ...] = ()
    """The text cut where a stream might cut it, through a card number or a key."""
    note: str = ""


def read_labelled_set(path: Path) -> list[LabelledExample]:
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            examples.append(LabelledExample(row["text"], frozenset(row["categories"]),
                                            tuple(row.get("chunks", ())), row.get("note", "")))
    return examples


def categories_found(findings: Iterable[Finding], classifier_scores: dict[Category, float],
                     threshold: float = DEFAULT_THRESHOLD) -> frozenset[str]:
    """The categories that a finding or a classifier score reaches `threshold` in."""
    found = {f.category for f in findings if f.score >= threshold}
    found.update(c for c, score in classifier_scores.items() if score >= threshold)
    return frozenset(category_name(category) for category in found)


def judge(examples: list[LabelledExample], rules: RuleDetectors,
          classifier: "ExemplarClassifier | None" = None,
          threshold: float = DEFAULT_THRESHOLD) -> list[tuple[frozenset[str], frozenset[str]]]:
    """(expected, found) categories per example: rules alone, or rules and the classifier."""
    texts = [example.text for example in examples]
    scores = classifier.scores(texts) if classifier else [{} for _ in texts]
    return [(example.categories, categories_found(rules.find(example.text), text_scores,
                                                  threshold))
            for example, text_scores in zip(examples, scores)]


@dataclass(frozen=True)
class CategoryQuality:
    category: str
    expected: int
    """Examples labelled with the category."""
    found: int
    """Examples the category was found in."""
    correct: int
    """Examples both labelled with it and found in it."""

    @property
    def precision(self) -> float:
        return self.correct / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.expected if self.expected else 1.0


@dataclass(frozen=True)
class QualityReport:
    categories: dict[str, CategoryQuality]
    benign: int
    benign_flagged: int
    """Benign examples in which any category was found."""

    @property
    def benign_false_positive_rate(self) -> float:
        return self.benign_flagged / self.benign if self.benign else 0.0


def measure(pairs: list[tuple[frozenset[str], frozenset[str]]],
            categories: Iterable[str] = LABELLED_CATEGORIES) -> QualityReport:
    """Precision and recall per category, and the benign false-positive rate, over
    (expected, found) pairs."""
    per_category = {}
    for category in categories:
        expected = sum(category in want for want, _ in pairs)
        found = sum(category in got for _, got in pairs)
        correct = sum(category in want and category in got for want, got in pairs)
        per_category[category] = CategoryQuality(category, expected, found, correct)
    benign = [got for want, got in pairs if not want]
    return QualityReport(per_category, len(benign), sum(bool(got) for got in benign))

"""What a detector reports: a span of the judged text, its category and how sure it is."""
from dataclasses import dataclass

from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.moderation_policy import HARMFUL

Category = int  # a moderation_pb2.Category value


@dataclass(frozen=True)
class Finding:
    category: Category
    start: int
    """Where the span starts in the judged text, in characters."""
    end: int
    """Where it ends (exclusive)."""
    score: float
    """0 to 1: how sure the detector is."""
    detector: str
    """Which detector, such as "rules/luhn" or "classifier/minilm"."""
    label: str = ""
    """What a redaction puts in place of the span, such as "EMAIL" (→ "[EMAIL]")."""


CLASSIFIED_CATEGORIES: tuple[Category, ...] = (*HARMFUL, moderation_pb2.CATEGORY_PROMPT_INJECTION)
"""What the classifier scores: the harmful categories, and prompt injection."""

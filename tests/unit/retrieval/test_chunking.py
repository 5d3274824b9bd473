"""Chunks cut by the embedding model's own tokens: within max_tokens, at word ends,
overlapping, with offsets into the text as sent."""
import pytest

from meshllm.sentence_embeddings import default_model_path
from services.retrieval.chunking import chunk_spans
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


def tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


TEXT = " ".join(f"Sentence {i} says something about topic {i % 7}, then stops." for i in range(60))


def test_chunks_stay_within_the_token_limit_end_at_words_and_overlap(tokenizer):
    spans = chunk_spans(tokenizer, TEXT, max_tokens=32, overlap_tokens=8)
    assert len(spans) > 10
    assert spans[0].start == 0 and spans[-1].end == len(TEXT)
    for span in spans:
        assert span.tokens <= 32
        assert tokens(tokenizer, TEXT[span.start:span.end]) == span.tokens
        assert span.end == len(TEXT) or TEXT[span.end] == " "  # ends at a word's end
        assert span.start == 0 or TEXT[span.start - 1] == " "
    for before, after in zip(spans, spans[1:]):
        assert before.start < after.start < before.end  # overlapping, always moving on


def test_without_overlap_the_chunks_tile_the_text(tokenizer):
    spans = chunk_spans(tokenizer, TEXT, max_tokens=32, overlap_tokens=0)
    for before, after in zip(spans, spans[1:]):
        assert TEXT[before.end:after.start].strip() == ""


def test_text_without_spaces_is_cut_by_tokens_and_still_overlaps(tokenizer):
    text = "日本語のテキストです。" * 30
    spans = chunk_spans(tokenizer, text, max_tokens=16, overlap_tokens=4)
    assert all(span.tokens <= 16 for span in spans)
    assert spans[-1].end == len(text)
    assert all(after.start < before.end for before, after in zip(spans, spans[1:]))


def test_text_with_no_tokens_has_no_chunks(tokenizer):
    assert chunk_spans(tokenizer, " \n\t ", 32, 8) == []


def test_offsets_count_characters_of_the_text_as_sent(tokenizer):
    text = "Ünïcödé ✓ naïve café — 🙂 emoji and MIXED Case stay as sent."
    (span,) = chunk_spans(tokenizer, text, 128, 16)
    assert text[span.start:span.end] == text

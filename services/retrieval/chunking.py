"""Documents cut into chunks the embedding model sees whole: at most `max_tokens` of its word
pieces each, ending at a word's end, each repeating up to `overlap_tokens` from the end of the
one before (a sentence cut in two is still found whole in one of them).

Offsets are in characters of the original text, so a citation can point into the document
the client sent; a chunk's text is that slice, case and spacing as sent."""
from dataclasses import dataclass


@dataclass(frozen=True)
class TextSpan:
    start: int
    end: int
    tokens: int


def chunk_spans(tokenizer, text: str, max_tokens: int, overlap_tokens: int) -> list[TextSpan]:
    """The chunks of `text`, in order; none for text without a token."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                         truncation=False, verbose=False)
    offsets = encoding["offset_mapping"]
    count = len(offsets)
    # word_starts[i]: token i begins a word after white space (a chunk may end before it or
    # start at it), so that punctuation stays with the word it follows.
    word_starts = [i == 0 or (offsets[i][0] > 0 and text[offsets[i][0] - 1].isspace())
                   for i in range(count)]
    spans = []
    first = 0
    while first < count:
        end = min(first + max_tokens, count)
        if end < count:
            # Back to the last word start in the window; a single word longer than the
            # window is cut where the window ends.
            cut = next((i for i in range(end, first, -1) if word_starts[i]), end)
            end = cut
        spans.append(TextSpan(offsets[first][0], offsets[end - 1][1], end - first))
        if end == count:
            break
        # The next chunk starts at the first word start within the overlap; where no word
        # starts there (text without spaces, one very long word), at the overlap's start.
        overlap_from = max(end - overlap_tokens, first + 1)
        first = next((i for i in range(overlap_from, end) if word_starts[i]), overlap_from)
    return spans

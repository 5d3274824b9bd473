"""How often one stream may send a delta: the per-chunk stream policy of a replica.

Every message costs each Python hop it crosses (generation, router, later moderation) a fixed
price, whatever it carries, so a busy replica sends fewer, fuller deltas. The replica has a
budget of delta messages per second shared by its open streams: a stream waits at least
`open_streams / budget` seconds (never more than `max_delay`) after one delta before it takes
the next, and everything the engine produced meanwhile goes out together in that next delta
(vLLM merges a request's outputs while its consumer is away). The first delta of a stream
never waits, nor does the second: a reader of words (output moderation, which releases a
word once the token after it shows the word is complete) can show nothing before it, so
pacing it would add a whole gap to the time to first token; with few streams the gap is far below the time between tokens, so chunking adds
no delay when the load is light; and the end of a stream is not held back either (its last
tokens and its finish go out as soon as they exist, or every caller would wait one gap
longer for its answer, and a closed-loop client's next request with it).
docs/streaming.md has the figures."""
from __future__ import annotations

import time
from collections.abc import Callable


class ChunkPacer:
    """The gap a stream keeps between two deltas, from the replica's current load."""

    def __init__(self, messages_per_second: float, max_delay: float,
                 open_streams: Callable[[], int]) -> None:
        if messages_per_second <= 0 or max_delay < 0:
            raise ValueError("messages_per_second must be positive and max_delay at least 0, "
                             f"got {messages_per_second} and {max_delay}")
        self._seconds_per_message = 1.0 / messages_per_second
        self._max_delay = max_delay
        self._open_streams = open_streams

    def gap(self) -> float:
        """Seconds between two deltas of one stream now."""
        return min(self._open_streams() * self._seconds_per_message, self._max_delay)

    def stream(self, max_tokens: int) -> "StreamPacing":
        return StreamPacing(self, max_tokens)


class StreamPacing:
    """One stream's pacing: how long to wait after each delta."""

    def __init__(self, pacer: ChunkPacer, max_tokens: int) -> None:
        self._pacer = pacer
        self._max_tokens = max_tokens
        self._tokens = 0
        self._first_sent_at: float | None = None

    def wait_after(self, tokens: int, sent_at: float) -> float:
        """Seconds to wait before taking the engine's next output, after a delta of `tokens`
        tokens went out at `sent_at` (time.monotonic)."""
        now = time.monotonic()
        if self._first_sent_at is None:
            self._first_sent_at = sent_at
            self._tokens += tokens
            return 0.0  # the second delta completes the first word
        self._tokens += tokens
        wait = sent_at + self._pacer.gap() - now
        if self._tokens > 1:
            # Never wait past the moment the stream is expected to reach max_tokens.
            per_token = (now - self._first_sent_at) / (self._tokens - 1)
            wait = min(wait, (self._max_tokens - self._tokens) * per_token)
        return wait

"""How often one stream may send a delta: the per-chunk stream policy of a replica.

Every message costs each Python hop it crosses (generation, router, later moderation) a fixed
price, whatever it carries, so a busy replica sends fewer, fuller deltas. The replica has a
budget of delta messages per second shared by its open streams: a stream waits at least
`open_streams / budget` seconds (never more than `max_delay`) after one delta before it takes
the next, and everything the engine produced meanwhile goes out together in that next delta
(vLLM merges a request's outputs while its consumer is away). The first delta of a stream
never waits; with few streams the gap is far below the time between tokens, so chunking adds
no delay when the load is light. docs/streaming.md has the figures."""
from __future__ import annotations

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

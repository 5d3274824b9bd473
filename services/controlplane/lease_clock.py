"""The registry's clock: monotonic time that the control plane's own stalls do not advance."""
import time
from collections.abc import Callable


class StallForgivingClock:
    """Monotonic time that advances at most `max_step` seconds between two readings.

    A lease measures how long a replica has been silent. When the control plane itself
    stalls (its loop blocked, its process starved of CPU on a saturated host, the machine
    suspended), the heartbeats sent meanwhile wait unread in its sockets: the silence is the
    control plane's, not the replicas'. Read against plain monotonic time, every lease that
    ran out during the stall would expire in the instant the control plane wakes, before it
    reads the heartbeats waiting for it (seen here: a router's and a replica's leases
    expired within 120 ms of each other and Envoy got an empty endpoint set). With this clock
    a gap longer than `max_step` between readings counts as `max_step`: every lease is
    extended by the stall. SnapshotPublisher reads it every fraction of a second, so in normal
    operation no gap comes near `max_step` and leases run on real time.

    `on_stall(seconds)` hears each stall that was forgiven, for the log.
    """

    def __init__(self, max_step: float, clock: Callable[[], float] = time.monotonic,
                 on_stall: Callable[[float], None] | None = None):
        if max_step <= 0:
            raise ValueError(f"max_step must be positive, got {max_step}")
        self.max_step = max_step
        self._raw = clock
        self._on_stall = on_stall
        self._last_raw = clock()
        self._now = self._last_raw
        self.forgiven_seconds = 0.0
        """Total time that stalls did not count."""

    def __call__(self) -> float:
        raw = self._raw()
        step, self._last_raw = raw - self._last_raw, raw
        if step > self.max_step:
            forgiven = step - self.max_step
            self.forgiven_seconds += forgiven
            step = self.max_step
            if self._on_stall is not None:
                self._on_stall(forgiven)
        self._now += max(step, 0.0)
        return self._now

"""Admission control in front of vLLM, whose waiting queue has no cap.

The cap is counted here, synchronously, as each call is admitted: vLLM's scheduler stats
arrive one engine step late, so a burst judged by them would all pass before the first stat
showed it. A replica holds at most `max_running` requests in the engine plus `max_waiting`
in its queue; a call past that is refused at once (RESOURCE_EXHAUSTED with RetryInfo), which
Envoy's mesh route retries on another replica before the client sees it."""
from __future__ import annotations

from services.generation.engine import ErrorCode, GenerationError

# How soon a refused caller may try again: about the time a short generation takes to free
# a slot on a busy replica.
RETRY_AFTER_SECONDS = 1.0


class AdmissionGate:
    """Counts admitted calls; `admit()` refuses past running capacity plus the waiting cap."""

    def __init__(self, max_running: int, max_waiting: int) -> None:
        if max_running < 1 or max_waiting < 0:
            raise ValueError(f"need max_running >= 1 and max_waiting >= 0, got {max_running}, "
                             f"{max_waiting}")
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.admitted = 0

    @property
    def capacity(self) -> int:
        return self.max_running + self.max_waiting

    @property
    def waiting(self) -> int:
        """Admitted calls beyond what the engine runs at once: at most `max_waiting`."""
        return max(0, self.admitted - self.max_running)

    def admit(self, reported_waiting: int = 0) -> "Admission":
        """Takes a slot now or raises GenerationError(RESOURCE_EXHAUSTED); no await between
        the check and the count, so concurrent calls cannot both take the last slot.

        `reported_waiting` is the engine's own (lagging) count: when it runs fewer than
        `max_running` at once (its KV cache is full), its queue may fill before ours does."""
        engine_full = reported_waiting > 0 and reported_waiting + 1 > self.max_waiting
        if self.admitted >= self.capacity or engine_full:
            raise GenerationError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"this replica is full: {self.max_running} running and "
                f"{max(self.waiting, reported_waiting)} waiting (limit {self.max_waiting}); "
                "retry shortly or on another replica",
                reason="REPLICA_QUEUE_FULL", retry_after=RETRY_AFTER_SECONDS)
        self.admitted += 1
        return Admission(self)


class Admission:
    """One admitted call's slot; `release()` frees it (idempotent)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate: AdmissionGate | None = gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate.admitted -= 1
            self._gate = None

    def __enter__(self) -> "Admission":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

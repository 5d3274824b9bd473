"""Counters behind the rate limits: exact sliding windows and leased concurrency slots.

A window is a log of admitted amounts with the time each was admitted, not a fixed bucket and
not a token bucket: a take is admitted iff what was admitted under its key in the past
`window_seconds`, plus its own amount, stays within the limit. Requests per minute are
`take(key, 1, limit, 60, request_id)`; tokens per minute reserve max_tokens with `take` and
settle the real count with `adjust`. Concurrency is a set of slots, each held on a lease so
that a caller that crashes leaks nothing for longer than its lease.

Two implementations keep one contract: `InProcessWindowCounters` (one auth replica, the
default) and `RedisWindowCounters` (redis_window_counters.py, one limit across replicas)."""
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class CountersUnavailable(Exception):
    """The shared counters could not be reached in time. The caller decides: fail closed where a
    limit protects money, open where it only smooths load."""


@dataclass(frozen=True)
class Decision:
    """The answer to a take or a slot acquisition.

    used: what counts under the key after this decision (the window's sum, or the slots held).
    retry_after_seconds: 0 when allowed; otherwise when enough old entries leave the window (or
      the earliest lease ends) for this request to fit — the value RetryInfo carries. A slot may
      be released earlier than its lease ends, so for slots it is an upper bound.
    never_fits: the request alone is above the limit (amount > limit, or a slot limit below 1),
      so no wait admits it; retry_after_seconds is then only the window, a pacing hint.
    """
    allowed: bool
    used: int
    retry_after_seconds: float
    never_fits: bool = False


class WindowCounters(Protocol):
    async def take(self, key: str, amount: int, limit: int, window_seconds: float,
                   entry_id: str) -> Decision:
        """Admits `amount` under `key` if the window has room, recording it as `entry_id`; a
        refused take records nothing. Idempotent per entry id while the entry is in the window:
        a retried take is answered `allowed` and counted once."""
        ...

    async def adjust(self, key: str, entry_id: str, new_amount: int) -> None:
        """Sets an admitted entry's amount (a reservation settled to what was really used),
        keeping the time it was admitted. An entry that has left the window is a no-op."""
        ...

    async def acquire_slot(self, key: str, slot_id: str, limit: int,
                           lease_seconds: float) -> Decision:
        """Holds `slot_id` under `key` until released or until its lease ends. Acquiring a slot
        already held renews its lease and is allowed (idempotent, and a heartbeat)."""
        ...

    async def release_slot(self, key: str, slot_id: str) -> None:
        """Gives a slot back; releasing a slot that is not held is a no-op."""
        ...

    async def close(self) -> None:
        ...


def check_take(amount: int, limit: int, window_seconds: float) -> None:
    if amount < 0:
        raise ValueError(f"amount must be at least 0, got {amount}")
    if limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit}")
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be above 0, got {window_seconds}")


def check_adjust(new_amount: int) -> None:
    if new_amount < 0:
        raise ValueError(f"new_amount must be at least 0, got {new_amount}")


def check_slot(limit: int, lease_seconds: float) -> None:
    if limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit}")
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be above 0, got {lease_seconds}")


@dataclass
class _Entry:
    entry_id: str
    admitted_at: float
    amount: int


@dataclass
class _Log:
    """One key's window: entries oldest first, by id for adjust, and their running sum."""
    entries: deque[_Entry] = field(default_factory=deque)
    by_id: dict[str, _Entry] = field(default_factory=dict)
    used: int = 0
    expires_at: float = 0.0

    def prune(self, cutoff: float) -> None:
        while self.entries and self.entries[0].admitted_at <= cutoff:
            gone = self.entries.popleft()
            del self.by_id[gone.entry_id]
            self.used -= gone.amount


@dataclass
class _Slots:
    leases: dict[str, float] = field(default_factory=dict)  # slot id -> lease ends at
    expires_at: float = 0.0

    def prune(self, now: float) -> None:
        for slot_id in [s for s, ends_at in self.leases.items() if ends_at <= now]:
            del self.leases[slot_id]


class InProcessWindowCounters:
    """The counters of one process. Every method runs to completion without awaiting, so on
    one event loop each call is atomic. A take costs O(1) amortized (entries leave the deque
    once, the sum is kept running); a refused take walks the oldest entries to find its
    retry-after. Keys idle past their window are forgotten, so idle tenants cost nothing."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._slots: dict[str, _Slots] = {}
        # One (expires_at, n, table, key, state) per live state, so forgetting idle keys costs
        # O(log keys) per call instead of a scan; `n` breaks ties without comparing states.
        self._expiries: list[tuple[float, int, dict, str, object]] = []
        self._sequence = itertools.count()

    @property
    def tracked_keys(self) -> int:
        """How many windows and slot sets are held in memory (for metrics and tests)."""
        return len(self._logs) + len(self._slots)

    async def take(self, key: str, amount: int, limit: int, window_seconds: float,
                   entry_id: str) -> Decision:
        check_take(amount, limit, window_seconds)
        now = self._clock()
        self._forget_idle(now)
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log()
            self._schedule_forget(self._logs, key, log, now + window_seconds)
        log.prune(now - window_seconds)
        if entry_id in log.by_id:
            return Decision(True, log.used, 0.0)
        if amount > limit:
            return Decision(False, log.used, float(window_seconds), never_fits=True)
        if log.used + amount <= limit:
            entry = _Entry(entry_id, now, amount)
            log.entries.append(entry)
            log.by_id[entry_id] = entry
            log.used += amount
            log.expires_at = max(log.expires_at, now + window_seconds)
            return Decision(True, log.used, 0.0)
        return Decision(False, log.used, _retry_after(log, amount, limit, window_seconds, now))

    async def adjust(self, key: str, entry_id: str, new_amount: int) -> None:
        check_adjust(new_amount)
        log = self._logs.get(key)
        entry = log.by_id.get(entry_id) if log is not None else None
        if entry is None:
            return
        log.used += new_amount - entry.amount
        entry.amount = new_amount

    async def acquire_slot(self, key: str, slot_id: str, limit: int,
                           lease_seconds: float) -> Decision:
        check_slot(limit, lease_seconds)
        now = self._clock()
        self._forget_idle(now)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots()
            self._schedule_forget(self._slots, key, slots, now + lease_seconds)
        slots.prune(now)
        if slot_id in slots.leases or len(slots.leases) < limit:
            slots.leases[slot_id] = now + lease_seconds
            slots.expires_at = max(slots.expires_at, now + lease_seconds)
            return Decision(True, len(slots.leases), 0.0)
        if limit < 1:
            return Decision(False, len(slots.leases), float(lease_seconds), never_fits=True)
        return Decision(False, len(slots.leases), min(slots.leases.values()) - now)

    async def release_slot(self, key: str, slot_id: str) -> None:
        slots = self._slots.get(key)
        if slots is not None:
            slots.leases.pop(slot_id, None)

    async def close(self) -> None:
        self._logs.clear()
        self._slots.clear()
        self._expiries.clear()

    def _schedule_forget(self, table: dict, key: str, state, expires_at: float) -> None:
        state.expires_at = expires_at
        heapq.heappush(self._expiries, (expires_at, next(self._sequence), table, key, state))

    def _forget_idle(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, _, table, key, state = heapq.heappop(self._expiries)
            if table.get(key) is not state:
                continue  # forgotten already (or closed)
            if state.expires_at <= now:
                del table[key]
            else:  # used since it was scheduled: look again when it can next expire
                self._schedule_forget(table, key, state, state.expires_at)


def _retry_after(log: _Log, amount: int, limit: int, window_seconds: float,
                 now: float) -> float:
    """Seconds until the oldest entries that must leave for `amount` to fit have left."""
    excess = log.used + amount - limit
    freed = 0
    for entry in log.entries:
        freed += entry.amount
        if freed >= excess:
            return entry.admitted_at + window_seconds - now
    return float(window_seconds)  # unreachable while amount <= limit: an empty window fits it


def open_counters(redis_url: str) -> WindowCounters:
    """Redis when a URL is set (one limit across every auth replica), else this process's own."""
    if redis_url:
        from services.auth.redis_window_counters import RedisWindowCounters
        return RedisWindowCounters(redis_url)
    return InProcessWindowCounters()

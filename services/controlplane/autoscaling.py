"""How many replicas one scaled unit should have: a service such as the router, or one
generation pool (one model). Knative's KPA, simplified.

Time is passed in (monotonic seconds): no clock inside, no sleeping in tests. Demand is the
calls in flight on all the unit's replicas plus the calls held by routers waiting for one,
sampled about every half second; samples older than the stable window are dropped, and with
no sample demand is 0.

- want_stable and want_panic: the plain mean of the samples over the stable window (60 s)
  and over the panic window (6 s), over the target concurrency per replica, rounded up. So
  any demand in the window asks for a replica: a call held for a cold start gets one at once.
- Panic, a burst too quick for the stable mean, starts when want_panic is at least
  panic_threshold x ready replicas (at least one) and above them, and lasts until a stable
  window passes without that again. In panic the count follows want_panic, never down.
- Otherwise the count is want_stable, but not below the highest count asked for (before this
  rule) in the last scale_down_delay_seconds: a dip does not stop replicas slow to restart.
- Scale to zero (min_replicas = 0 only): with idle_timeout_seconds, to 0 once no demand was
  seen for that long (from the autoscaler's start if never); until then one replica the unit
  has or asked for is kept, but none is started. Without it, to 0 when the count above is 0.
- Clamped to [min_replicas, max_replicas]. A pin (`meshllm scale`) overrides everything, min
  included; the autoscaler keeps deciding underneath, so an unpin picks up where it is.
"""
import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingSettings:
    """How one unit scales; scaling.toml says what each field is for."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_concurrency: float = 8.0
    stable_window_seconds: float = 60.0
    panic_window_seconds: float = 6.0
    panic_threshold: float = 2.0
    scale_down_delay_seconds: float = 30.0
    idle_timeout_seconds: float | None = None

    def __post_init__(self) -> None:
        floor, stable = max(1, self.min_replicas), self.stable_window_seconds
        idle = self.idle_timeout_seconds
        rules = {  # field: (whether it holds, what it must be)
            "min_replicas": (self.min_replicas >= 0, "at least 0"),
            "max_replicas": (self.max_replicas >= floor, f"at least max(1, min_replicas), {floor}"),
            "target_concurrency": (self.target_concurrency > 0, "above 0"),
            "stable_window_seconds": (stable > 0, "above 0"),
            "panic_window_seconds": (0 < self.panic_window_seconds <= stable,
                                     f"above 0 and at most stable_window_seconds ({stable:g})"),
            "panic_threshold": (self.panic_threshold >= 1, "at least 1"),
            "scale_down_delay_seconds": (self.scale_down_delay_seconds >= 0, "at least 0"),
            "idle_timeout_seconds": (idle is None or (self.min_replicas == 0 and idle > 0),
                                     f"above 0, and set only with min_replicas = 0 "
                                     f"(min_replicas is {self.min_replicas})"),
        }
        for field, (holds, rule) in rules.items():
            if not holds:  # a NaN fails every comparison, so it lands here too
                raise ValueError(f"{field} must be {rule}, got {getattr(self, field)}")


@dataclass(frozen=True)
class Decision:
    """One answer of the autoscaler, with the inputs that led to it."""

    desired: int
    reason: str
    """In words a person reads, numbers included."""
    panic: bool
    stable_concurrency: float
    panic_concurrency: float


class Autoscaler:
    """Decides the replica count of one unit from the demand it is shown."""

    def __init__(self, settings: ScalingSettings, now: float):
        self.settings = settings
        self._samples: deque[tuple[float, float]] = deque()  # (time, concurrency)
        self._recent_counts: deque[tuple[float, int]] = deque()  # (time, count before the delay)
        self._last_demand_at = now  # idle time counts from here
        self._panic_triggered_at: float | None = None  # None: not in panic
        self._panic_count = 0  # the highest count asked for in this panic
        self._desired = 0  # the last count decided, pin aside
        self._pinned: int | None = None

    @property
    def pinned(self) -> int | None:
        return self._pinned

    def pin(self, replicas: int | None) -> None:
        """Holds the count at `replicas` whatever the demand; None hands it back."""
        limit = self.settings.max_replicas
        if replicas is not None and not 0 <= replicas <= limit:
            raise ValueError(f"a pin must be between 0 and max_replicas ({limit}), got {replicas}")
        self._pinned = replicas

    def observe(self, concurrency: float, now: float) -> None:
        """One sample of demand: calls in flight on all replicas plus calls held for one."""
        if not concurrency >= 0:
            raise ValueError(f"concurrency must be at least 0, got {concurrency}")
        self._samples.append((now, concurrency))
        if concurrency > 0:
            self._last_demand_at = now
        self._drop_old_samples(now)

    def decide(self, ready_replicas: int, now: float) -> Decision:
        s = self.settings
        self._drop_old_samples(now)
        stable = _mean([c for _, c in self._samples])
        burst = _mean([c for t, c in self._samples if now - t <= s.panic_window_seconds])
        want_stable = math.ceil(stable / s.target_concurrency)
        want_panic = math.ceil(burst / s.target_concurrency)
        target = f"target {s.target_concurrency:g}"

        if self._update_panic(want_panic, ready_replicas, now):
            count = self._panic_count = max(want_panic, self._panic_count)
            reason = (f"panic: {burst:.1f} calls over {s.panic_window_seconds:g} s / {target} -> "
                      f"{_replicas(want_panic)} with {ready_replicas} ready")
            if count > want_panic:
                reason += f"; no scale-down in panic -> {count}"
        else:
            count = want_stable
            reason = (f"stable: {stable:.1f} calls over {s.stable_window_seconds:g} s / {target}"
                      f" -> {_replicas(want_stable)}")

        held = self._highest_recent_count(count, now)
        if held > count:
            count = held
            reason += f"; held at {held} for the {s.scale_down_delay_seconds:g} s scale-down delay"

        count, reason = self._apply_idle_timeout(count, reason, ready_replicas, now)
        desired = min(max(count, s.min_replicas), s.max_replicas)
        if desired != count:
            reason += f"; clamped to [{s.min_replicas}, {s.max_replicas}] -> {desired}"
        if ready_replicas == 0 and desired > 0 and self._samples and self._samples[-1][1] > 0:
            reason = f"held calls waiting for a cold start -> {desired} ({reason})"
        self._desired = desired

        if self._pinned is not None:
            desired, reason = self._pinned, f"pinned at {self._pinned} (autoscaler: {reason})"
        panic = self._panic_triggered_at is not None  # an idle timeout may have ended it
        return Decision(desired, reason, panic, stable, burst)

    def _update_panic(self, want_panic: int, ready_replicas: int, now: float) -> bool:
        s = self.settings
        bursting = (want_panic >= s.panic_threshold * max(ready_replicas, 1)
                    and want_panic > ready_replicas)
        if bursting:
            if self._panic_triggered_at is None:
                self._panic_count = self._desired  # never below what was asked for before the burst
            self._panic_triggered_at = now
        elif (self._panic_triggered_at is not None
              and now - self._panic_triggered_at >= s.stable_window_seconds):
            self._panic_triggered_at = None
        return self._panic_triggered_at is not None

    def _highest_recent_count(self, count: int, now: float) -> int:
        self._recent_counts.append((now, count))
        while now - self._recent_counts[0][0] > self.settings.scale_down_delay_seconds:
            self._recent_counts.popleft()
        return max(c for _, c in self._recent_counts)

    def _apply_idle_timeout(self, count: int, reason: str, ready_replicas: int,
                            now: float) -> tuple[int, str]:
        timeout = self.settings.idle_timeout_seconds
        if timeout is None:
            return count, reason
        idle = now - self._last_demand_at
        if idle >= timeout:
            self._panic_triggered_at = None  # a panic does not outlast all demand
            return 0, f"idle {idle:g} s >= idle timeout {timeout:g} s -> 0"
        if count == 0 and (ready_replicas > 0 or self._desired > 0):
            # The timeout keeps a warm replica warm; starting a cold one for nobody would cost
            # a model load (a control plane restart must not start every pool).
            return 1, f"{reason}; kept at 1 until idle for {timeout:g} s (idle {idle:g} s)"
        return count, reason

    def _drop_old_samples(self, now: float) -> None:
        while self._samples and now - self._samples[0][0] > self.settings.stable_window_seconds:
            self._samples.popleft()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"

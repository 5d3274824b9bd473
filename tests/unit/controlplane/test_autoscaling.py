import pytest

from services.controlplane.autoscaling import Autoscaler, Decision, ScalingSettings

STEP = 0.5  # seconds between samples, as the control plane samples demand


def run(scaler: Autoscaler, concurrency: float, start: float, end: float,
        ready: int) -> Decision:
    """Samples `concurrency` and decides every STEP seconds after `start` up to `end`."""
    decision = None
    for i in range(1, round((end - start) / STEP) + 1):
        now = start + i * STEP
        scaler.observe(concurrency, now)
        decision = scaler.decide(ready, now)
    return decision


def test_steady_load_asks_for_demand_over_target_rounded_up():
    scaler = Autoscaler(ScalingSettings(target_concurrency=8), now=0)
    decision = run(scaler, 17, 0, 120, ready=3)
    assert decision.desired == 3 and not decision.panic
    assert decision.stable_concurrency == pytest.approx(17)
    assert decision.reason == "stable: 17.0 calls over 60 s / target 8 -> 3 replicas"


def test_the_count_is_clamped_to_min_and_max():
    settings = ScalingSettings(min_replicas=2, max_replicas=4, target_concurrency=8)
    busy = run(Autoscaler(settings, now=0), 100, 0, 120, ready=4)
    assert busy.desired == 4 and "clamped to [2, 4] -> 4" in busy.reason
    quiet = run(Autoscaler(settings, now=0), 0, 0, 120, ready=2)
    assert quiet.desired == 2 and "clamped to [2, 4] -> 2" in quiet.reason


def test_the_scale_down_delay_holds_the_higher_count_then_lets_it_drop():
    settings = ScalingSettings(max_replicas=10, stable_window_seconds=10, panic_window_seconds=1,
                               scale_down_delay_seconds=30)
    scaler = Autoscaler(settings, now=0)
    assert run(scaler, 24, 0, 20, ready=3).desired == 3
    # The 10 s stable mean asks for 3 until about t=25 and for 2 until t=30, while the load
    # of 24 is still in its window; each count is held for 30 s.
    held = run(scaler, 8, 20, 50, ready=3)
    assert held.desired == 3
    assert held.reason.startswith("stable: 8.0 calls over 10 s / target 8 -> 1 replica;")
    assert "held at 3 for the 30 s scale-down delay" in held.reason
    assert run(scaler, 8, 50, 60, ready=3).desired == 2
    assert run(scaler, 8, 60, 60.5, ready=3).desired == 1


def test_a_burst_panics_scales_up_at_once_and_never_down_until_a_stable_window_passes():
    settings = ScalingSettings(max_replicas=10, target_concurrency=8)
    scaler = Autoscaler(settings, now=0)
    assert run(scaler, 8, 0, 60, ready=1).desired == 1

    burst = run(scaler, 40, 60, 66.5, ready=1)
    assert burst.panic and burst.desired == 5
    assert burst.panic_concurrency == pytest.approx(40)
    assert burst.stable_concurrency < 16  # the stable window alone would ask for 2
    assert burst.reason == "panic: 40.0 calls over 6 s / target 8 -> 5 replicas with 1 ready"

    # Demand falls back at once, and 5 are ready: no scale-down while in panic...
    calm = run(scaler, 8, 66.5, 126, ready=5)
    assert calm.panic and calm.desired == 5
    assert "no scale-down in panic -> 5" in calm.reason
    # ...which ends a stable window (60 s) after the burst last showed, at t=126.5;
    # then the scale-down delay holds 5 for 30 s more.
    ended = run(scaler, 8, 126, 126.5, ready=5)
    assert not ended.panic and ended.desired == 5
    assert run(scaler, 8, 126.5, 156, ready=5).desired == 5
    assert run(scaler, 8, 156, 160, ready=5).desired == 1


def test_a_burst_within_the_ready_replicas_capacity_does_not_panic():
    scaler = Autoscaler(ScalingSettings(max_replicas=10, target_concurrency=8), now=0)
    decision = run(scaler, 40, 0, 6, ready=4)  # wants 5: not twice 4
    assert not decision.panic and decision.desired == 5


def test_a_call_held_for_a_cold_start_gets_a_replica_at_once():
    scaler = Autoscaler(ScalingSettings(min_replicas=0, idle_timeout_seconds=300), now=0)
    assert run(scaler, 0, 900, 1000, ready=0).desired == 0
    scaler.observe(1, now=1000.5)
    decision = scaler.decide(0, now=1000.5)
    assert decision.stable_concurrency < 0.01
    assert decision.desired == 1
    assert decision.reason.startswith("held calls waiting for a cold start -> 1")


def test_scaling_from_zero_needs_no_idle_timeout_either():
    scaler = Autoscaler(ScalingSettings(min_replicas=0), now=0)
    assert run(scaler, 0, 0, 100, ready=0).desired == 0
    assert run(scaler, 1, 100, 100.5, ready=0).desired == 1


def test_an_idle_pool_goes_to_zero_only_after_its_idle_timeout():
    scaler = Autoscaler(ScalingSettings(min_replicas=0, idle_timeout_seconds=300), now=0)
    assert run(scaler, 5, 0, 10, ready=1).desired == 1
    kept = run(scaler, 0, 10, 309.5, ready=1)
    assert kept.desired == 1 and "kept at 1 until idle for 300 s (idle 299.5 s)" in kept.reason
    idle = run(scaler, 0, 309.5, 310, ready=1)
    assert idle.desired == 0 and idle.reason == "idle 300 s >= idle timeout 300 s -> 0"


def test_any_demand_within_the_idle_timeout_keeps_the_pool_up():
    scaler = Autoscaler(ScalingSettings(min_replicas=0, idle_timeout_seconds=300), now=0)
    run(scaler, 5, 0, 10, ready=1)
    run(scaler, 0, 10, 200, ready=1)
    run(scaler, 1, 200, 200.5, ready=1)
    assert run(scaler, 0, 200.5, 310, ready=1).desired == 1
    assert run(scaler, 0, 310, 500.5, ready=1).desired == 0


def test_idle_time_counts_from_the_start_and_no_cold_replica_is_started_for_it():
    settings = ScalingSettings(min_replicas=0, idle_timeout_seconds=300)
    warm = Autoscaler(settings, now=1000)
    assert warm.decide(1, now=1299).desired == 1
    assert warm.decide(1, now=1300).desired == 0
    assert Autoscaler(settings, now=1000).decide(0, now=1001).desired == 0


def test_without_an_idle_timeout_min_zero_goes_to_zero_after_the_scale_down_delay():
    scaler = Autoscaler(ScalingSettings(min_replicas=0), now=0)
    run(scaler, 8, 0, 10, ready=1)
    assert run(scaler, 0, 10, 100, ready=1).desired == 1  # stable mean sees demand until t=70
    assert run(scaler, 0, 100, 101, ready=1).desired == 0


def test_min_replicas_above_zero_never_goes_to_zero():
    scaler = Autoscaler(ScalingSettings(min_replicas=1), now=0)
    run(scaler, 8, 0, 10, ready=1)
    assert run(scaler, 0, 10, 1000, ready=1).desired == 1


def test_a_pin_overrides_demand_and_min_until_unpinned():
    scaler = Autoscaler(ScalingSettings(min_replicas=1, max_replicas=4), now=0)
    scaler.pin(0)
    pinned = run(scaler, 17, 0, 60, ready=3)
    assert scaler.pinned == 0 and pinned.desired == 0
    assert pinned.reason.startswith("pinned at 0 (autoscaler: stable: 17.0 calls")
    scaler.pin(None)
    assert scaler.pinned is None and scaler.decide(3, now=60.5).desired == 3


@pytest.mark.parametrize("replicas", [-1, 5])
def test_a_pin_outside_zero_to_max_is_refused(replicas):
    scaler = Autoscaler(ScalingSettings(max_replicas=4), now=0)
    with pytest.raises(ValueError, match=f"max_replicas \\(4\\), got {replicas}"):
        scaler.pin(replicas)


def test_negative_demand_is_refused():
    with pytest.raises(ValueError, match="concurrency must be at least 0, got -1"):
        Autoscaler(ScalingSettings(), now=0).observe(-1, now=1)


@pytest.mark.parametrize(("fields", "message"), [
    ({"min_replicas": -1}, "min_replicas must be at least 0, got -1"),
    ({"max_replicas": 0}, "max_replicas must be at least max(1, min_replicas), 1, got 0"),
    ({"min_replicas": 3, "max_replicas": 2},
     "max_replicas must be at least max(1, min_replicas), 3, got 2"),
    ({"target_concurrency": 0}, "target_concurrency must be above 0, got 0"),
    ({"target_concurrency": float("nan")}, "target_concurrency must be above 0, got nan"),
    ({"stable_window_seconds": 0}, "stable_window_seconds must be above 0, got 0"),
    ({"panic_window_seconds": 90},
     "panic_window_seconds must be above 0 and at most stable_window_seconds (60), got 90"),
    ({"panic_threshold": 0.5}, "panic_threshold must be at least 1, got 0.5"),
    ({"scale_down_delay_seconds": -1}, "scale_down_delay_seconds must be at least 0, got -1"),
    ({"idle_timeout_seconds": 300}, "idle_timeout_seconds must be above 0, and set only with "
                                    "min_replicas = 0 (min_replicas is 1), got 300"),
    ({"min_replicas": 0, "idle_timeout_seconds": 0}, "idle_timeout_seconds must be above 0"),
])
def test_settings_name_the_field_and_value_they_refuse(fields, message):
    with pytest.raises(ValueError) as refused:
        ScalingSettings(**fields)
    assert message in str(refused.value)

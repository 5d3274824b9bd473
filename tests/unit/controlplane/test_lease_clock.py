import pytest

from services.controlplane.lease_clock import StallForgivingClock


class RawClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_time_read_often_runs_at_its_real_pace():
    raw = RawClock()
    clock = StallForgivingClock(max_step=1.0, clock=raw)
    start = clock()
    for _ in range(40):
        raw.now += 0.25
        clock()
    assert clock() - start == pytest.approx(10.0)
    assert clock.forgiven_seconds == 0


def test_a_gap_longer_than_max_step_counts_as_max_step_and_is_reported():
    raw, stalls = RawClock(), []
    clock = StallForgivingClock(max_step=1.0, clock=raw, on_stall=stalls.append)
    start = clock()
    raw.now += 12.0
    assert clock() - start == pytest.approx(1.0)
    raw.now += 0.5
    assert clock() - start == pytest.approx(1.5)
    assert stalls == [pytest.approx(11.0)] and clock.forgiven_seconds == pytest.approx(11.0)


def test_it_never_runs_backwards():
    raw = RawClock()
    clock = StallForgivingClock(max_step=1.0, clock=raw)
    before = clock()
    raw.now -= 5
    assert clock() == before


def test_max_step_must_be_positive():
    with pytest.raises(ValueError):
        StallForgivingClock(max_step=0)

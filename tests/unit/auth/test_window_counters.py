"""The in-process window counters on a hand-driven clock: exact sliding windows, settled
reservations, leased slots and forgetting idle keys, without sleeping."""
import pytest

from services.auth.window_counters import Decision, InProcessWindowCounters
from tests.fake_clock import FakeClock


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def counters(clock):
    return InProcessWindowCounters(clock)


async def test_61st_request_in_a_minute_is_refused_until_the_first_leaves(counters, clock):
    for n in range(60):
        assert (await counters.take("rpm:a", 1, 60, 60, f"r{n}")).allowed
        clock.now += 0.5
    refused = await counters.take("rpm:a", 1, 60, 60, "r60")
    assert refused == Decision(False, 60, pytest.approx(30.0))
    assert (await counters.take("rpm:b", 1, 60, 60, "r0")).allowed
    clock.now += 30.0
    assert (await counters.take("rpm:a", 1, 60, 60, "r60")) == Decision(True, 60, 0.0)


async def test_window_slides_instead_of_resetting_at_a_boundary(counters, clock):
    assert (await counters.take("k", 30, 60, 60, "early")).allowed
    clock.now += 30
    assert (await counters.take("k", 30, 60, 60, "middle")).allowed
    clock.now += 29.9
    assert not (await counters.take("k", 1, 60, 60, "late")).allowed
    clock.now += 0.1  # `early` is exactly one window old: it no longer counts
    assert (await counters.take("k", 30, 60, 60, "late")) == Decision(True, 60, 0.0)


async def test_retry_after_waits_for_as_many_old_entries_as_the_amount_needs(counters, clock):
    for n, at in enumerate([0, 10, 20]):
        clock.now = 1000.0 + at
        await counters.take("tpm", 20, 60, 60, f"e{n}")
    clock.now = 1030.0
    assert (await counters.take("tpm", 20, 60, 60, "x")).retry_after_seconds == pytest.approx(30)
    assert (await counters.take("tpm", 40, 60, 60, "x")).retry_after_seconds == pytest.approx(40)


async def test_refused_take_records_nothing(counters):
    assert (await counters.take("k", 50, 60, 60, "a")).allowed
    for n in range(5):
        assert not (await counters.take("k", 20, 60, 60, f"refused{n}")).allowed
    assert (await counters.take("k", 10, 60, 60, "b")) == Decision(True, 60, 0.0)


async def test_amount_above_the_limit_never_fits(counters):
    decision = await counters.take("k", 61, 60, 60, "huge")
    assert (decision.allowed, decision.never_fits, decision.used) == (False, True, 0)
    assert (await counters.take("k", 60, 60, 60, "max")) == Decision(True, 60, 0.0, False)


async def test_retried_take_with_the_same_entry_id_counts_once(counters):
    assert (await counters.take("k", 40, 60, 60, "same")).allowed
    assert (await counters.take("k", 40, 60, 60, "same")) == Decision(True, 40, 0.0)


async def test_adjust_settles_a_reservation_and_keeps_its_time(counters, clock):
    await counters.take("tpm", 50, 60, 60, "request")
    assert not (await counters.take("tpm", 20, 60, 60, "next")).allowed
    clock.now += 10
    await counters.adjust("tpm", "request", 5)
    assert (await counters.take("tpm", 20, 60, 60, "next")) == Decision(True, 25, 0.0)
    await counters.adjust("tpm", "request", 40)  # a settlement may also exceed the reservation
    refused = await counters.take("tpm", 10, 60, 60, "third")
    assert refused == Decision(False, 60, pytest.approx(50.0))  # `request` still leaves at 60 s


async def test_adjust_of_an_unknown_or_expired_entry_is_a_no_op(counters, clock):
    await counters.adjust("nobody", "nothing", 10)
    await counters.take("k", 10, 60, 1, "old")
    clock.now += 2
    await counters.adjust("k", "old", 50)
    assert (await counters.take("k", 60, 60, 1, "new")) == Decision(True, 60, 0.0)


async def test_slots_cap_concurrency_and_come_back_on_release(counters):
    assert (await counters.acquire_slot("streams", "s1", 2, 30)).allowed
    assert (await counters.acquire_slot("streams", "s2", 2, 30)) == Decision(True, 2, 0.0)
    refused = await counters.acquire_slot("streams", "s3", 2, 30)
    assert refused == Decision(False, 2, pytest.approx(30.0))
    assert (await counters.acquire_slot("streams", "s1", 2, 30)).allowed  # idempotent
    await counters.release_slot("streams", "s1")
    await counters.release_slot("streams", "s1")
    assert (await counters.acquire_slot("streams", "s3", 2, 30)) == Decision(True, 2, 0.0)


async def test_a_slot_whose_lease_ended_stops_counting(counters, clock):
    await counters.acquire_slot("streams", "crashed", 1, 5)
    clock.now += 4.9
    assert not (await counters.acquire_slot("streams", "next", 1, 5)).allowed
    clock.now += 0.1
    assert (await counters.acquire_slot("streams", "next", 1, 5)).allowed


async def test_reacquiring_a_slot_renews_its_lease(counters, clock):
    await counters.acquire_slot("streams", "long", 1, 5)
    clock.now += 4
    await counters.acquire_slot("streams", "long", 1, 5)
    clock.now += 4
    refused = await counters.acquire_slot("streams", "other", 1, 5)
    assert refused == Decision(False, 1, pytest.approx(1.0))


async def test_slot_limit_zero_never_fits(counters):
    decision = await counters.acquire_slot("streams", "s", 0, 5)
    assert (decision.allowed, decision.never_fits) == (False, True)


async def test_idle_keys_are_forgotten_after_their_window(counters, clock):
    for n in range(100):
        await counters.take(f"tenant{n}", 1, 10, 1, "r")
        await counters.acquire_slot(f"tenant{n}", "s", 1, 2)
    assert counters.tracked_keys == 200
    clock.now += 1.5
    await counters.take("busy", 1, 10, 1, "r")
    assert counters.tracked_keys == 101  # the slots' leases run longer than the windows
    clock.now += 1.0
    await counters.take("busy", 1, 10, 1, "r2")
    assert counters.tracked_keys == 1


async def test_a_key_in_use_is_not_forgotten(counters, clock):
    await counters.take("k", 1, 10, 1, "a")
    clock.now += 0.9
    await counters.take("k", 1, 10, 1, "b")
    clock.now += 0.2  # past the first expiry, within b's window
    assert (await counters.take("k", 9, 10, 1, "c")) == Decision(True, 10, 0.0)


@pytest.mark.parametrize("call", [
    lambda c: c.take("k", -1, 10, 1, "e"),
    lambda c: c.take("k", 1, -1, 1, "e"),
    lambda c: c.take("k", 1, 10, 0, "e"),
    lambda c: c.adjust("k", "e", -5),
    lambda c: c.acquire_slot("k", "s", -1, 1),
    lambda c: c.acquire_slot("k", "s", 1, 0),
])
async def test_nonsense_arguments_are_rejected(counters, call):
    with pytest.raises(ValueError):
        await call(counters)

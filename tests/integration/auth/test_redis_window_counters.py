"""The window counters on a real redis-server: the contract both implementations keep (run
against each), then what only Redis has to prove — one limit across two replicas, expiring keys,
and a Redis that dies and comes back."""
import asyncio
import time
import uuid

import pytest
import redis.asyncio

from services.auth.redis_window_counters import RedisWindowCounters
from services.auth.window_counters import CountersUnavailable, InProcessWindowCounters
from tests.redis_server import running_redis_server


@pytest.fixture(scope="module")
async def redis_server(tmp_path_factory):
    async with running_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def redis_counters(redis_server):
    # Latency has tests of its own; here a busy machine must not fail a contract test.
    counters = RedisWindowCounters(redis_server.url, timeout_seconds=2)
    yield counters
    await counters.close()


@pytest.fixture
async def raw_redis(redis_server):
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(params=["in_process", "redis"])
def counters(request):
    # Not async: an async fixture cannot set up another one by name.
    if request.param == "in_process":
        return InProcessWindowCounters()
    return request.getfixturevalue("redis_counters")


@pytest.fixture
def key():
    return f"test-{uuid.uuid4().hex[:8]}"


# The contract, on both implementations, with real time.

async def test_61st_take_in_a_minute_is_refused_and_another_key_is_not(counters, key):
    for n in range(60):
        assert (await counters.take(f"rpm:{key}:a", 1, 60, 60, f"r{n}")).allowed
    refused = await counters.take(f"rpm:{key}:a", 1, 60, 60, "r60")
    assert (refused.allowed, refused.used, refused.never_fits) == (False, 60, False)
    assert 55 < refused.retry_after_seconds <= 60
    assert (await counters.take(f"rpm:{key}:b", 1, 60, 60, "r0")).allowed


async def test_entries_leave_the_window_after_it_passes(counters, key):
    assert (await counters.take(key, 10, 10, 0.5, "first")).allowed
    refused = await counters.take(key, 1, 10, 0.5, "second")
    assert not refused.allowed and 0 < refused.retry_after_seconds <= 0.5
    await asyncio.sleep(refused.retry_after_seconds + 0.02)
    decision = await counters.take(key, 1, 10, 0.5, "second")
    assert (decision.allowed, decision.used) == (True, 1)


async def test_adjust_lowers_usage_so_more_fits(counters, key):
    assert (await counters.take(key, 50, 60, 60, "reserved")).allowed
    assert not (await counters.take(key, 20, 60, 60, "next")).allowed
    await counters.adjust(key, "reserved", 7)
    decision = await counters.take(key, 20, 60, 60, "next")
    assert (decision.allowed, decision.used) == (True, 27)
    await counters.adjust(key, "gone", 1)  # unknown entry: nothing happens
    assert (await counters.take(key, 33, 60, 60, "last")).used == 60


async def test_amount_above_limit_never_fits_and_retried_take_counts_once(counters, key):
    huge = await counters.take(key, 61, 60, 60, "huge")
    assert (huge.allowed, huge.never_fits) == (False, True)
    assert (await counters.take(key, 40, 60, 60, "same")).used == 40
    again = await counters.take(key, 40, 60, 60, "same")
    assert (again.allowed, again.used) == (True, 40)


async def test_slots_are_idempotent_released_and_leased(counters, key):
    assert (await counters.acquire_slot(key, "s1", 2, 60)).allowed
    assert (await counters.acquire_slot(key, "s1", 2, 60)).used == 1
    assert (await counters.acquire_slot(key, "crashed", 2, 0.3)).used == 2
    refused = await counters.acquire_slot(key, "s3", 2, 60)
    assert not refused.allowed and 0 < refused.retry_after_seconds <= 0.3
    await counters.release_slot(key, "s1")
    assert (await counters.acquire_slot(key, "s3", 2, 60)).allowed
    await asyncio.sleep(0.35)  # `crashed` never releases: its lease ends
    decision = await counters.acquire_slot(key, "s4", 2, 60)
    assert (decision.allowed, decision.used) == (True, 2)


async def test_long_windows_are_walked_and_pruned_in_full(counters, key):
    # More entries than one batch of the Lua scripts (256 walked, 512 pruned at a time).
    decisions = await asyncio.gather(*(counters.take(key, 1, 1000, 1.5, f"r{n}")
                                       for n in range(1000)))
    assert all(d.allowed for d in decisions)
    refused = await counters.take(key, 600, 1000, 1.5, "big")
    assert (refused.allowed, refused.used) == (False, 1000)
    await asyncio.sleep(refused.retry_after_seconds + 0.02)
    decision = await counters.take(key, 600, 1000, 1.5, "big")
    assert decision.allowed and decision.used <= 1000


# Redis only.

async def test_each_call_is_one_evalsha(redis_server, redis_counters, raw_redis, key):
    async def one_of_each():
        await redis_counters.take(key, 1, 10, 60, "measured")
        await redis_counters.adjust(key, "measured", 0)
        await redis_counters.acquire_slot(key, "s", 1, 60)
        await redis_counters.release_slot(key, "s")

    await one_of_each()  # connects, and meets NOSCRIPT once per script (then EVAL caches it)
    marker = redis.asyncio.Redis.from_url(redis_server.url)
    await marker.ping()  # connected before the monitor starts: it sends nothing but ECHO
    sent = []
    async with raw_redis.monitor() as monitor:
        await one_of_each()
        await marker.echo("done")
        while not (seen := await monitor.next_command())["command"].startswith("ECHO"):
            if seen["client_type"] != "lua":  # what the scripts call runs inside Redis
                sent.append(seen["command"].split()[0])
    await marker.aclose()
    assert sent == ["EVALSHA", "EVALSHA", "EVALSHA", "ZREM"]

async def test_two_replicas_on_one_redis_admit_exactly_the_limit(redis_server, key):
    # A generous deadline: this proves atomicity, and a busy CI machine must not turn a slow
    # burst of 200 into CountersUnavailable.
    replicas = [RedisWindowCounters(redis_server.url, timeout_seconds=2) for _ in range(2)]
    try:
        decisions = await asyncio.gather(*(
            replicas[n % 2].take(f"rpm:{key}", 1, 60, 60, f"r{n}") for n in range(200)))
    finally:
        for replica in replicas:
            await replica.close()
    # No slack: each take is one script, and Redis runs scripts one at a time.
    assert sum(d.allowed for d in decisions) == 60
    assert all(d.retry_after_seconds > 0 for d in decisions if not d.allowed)


async def test_keys_expire_after_their_window(redis_counters, raw_redis, key):
    await redis_counters.take(key, 1, 10, 0.3, "r")
    await redis_counters.acquire_slot(key, "s", 1, 0.3)
    pattern = f"meshllm:counters:{{{key}}}:*"
    stored = sorted([k async for k in raw_redis.scan_iter(match=pattern)])
    assert [k.decode().rsplit(":", 1)[1] for k in stored] == ["amounts", "log", "slots"]
    assert all(0 < ttl <= 300 for ttl in [await raw_redis.pttl(k) for k in stored])
    await asyncio.sleep(0.4)
    assert [k async for k in raw_redis.scan_iter(match=pattern)] == []


async def test_script_cache_flushed_still_works(redis_counters, raw_redis, key):
    assert (await redis_counters.take(key, 1, 10, 60, "a")).allowed
    await raw_redis.script_flush()
    assert (await redis_counters.take(key, 1, 10, 60, "b")).used == 2


async def test_redis_killed_is_unavailable_fast_and_the_same_client_recovers(redis_server, key):
    counters = RedisWindowCounters(redis_server.url)
    try:
        assert (await counters.take(key, 1, 10, 60, "before")).allowed
        await redis_server.stop()
        for call in (lambda: counters.take(key, 1, 10, 60, "during"),
                     lambda: counters.adjust(key, "before", 2),
                     lambda: counters.acquire_slot(key, "s", 1, 60),
                     lambda: counters.release_slot(key, "s")):
            started = time.monotonic()
            with pytest.raises(CountersUnavailable):
                await call()
            assert time.monotonic() - started < 0.5
    finally:
        await redis_server.start()
    # Redis came back empty (no persistence) and without our scripts: the client reconnects.
    decision = await counters.take(key, 1, 10, 60, "after")
    await counters.close()
    assert (decision.allowed, decision.used) == (True, 1)


async def test_a_redis_that_hangs_is_unavailable_within_the_edge_budget(key):
    # A peer that accepts connections and never answers: a stuck Redis or a black-holed link.
    held = []
    silent = await asyncio.start_server(lambda reader, writer: held.append(writer),
                                        "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    counters = RedisWindowCounters(f"redis://127.0.0.1:{port}/0")
    try:
        started = time.monotonic()
        with pytest.raises(CountersUnavailable):
            await counters.take(key, 1, 10, 60, "r")
        assert time.monotonic() - started < 0.25
    finally:
        await counters.close()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()

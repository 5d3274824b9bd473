"""The auth store's contract, one suite on SQLite and on PostgreSQL (fixtures in conftest.py).

The budget tests are the point: reserves racing through two stores on one database — two auth
replicas — never hold more than a budget, and a settled call is charged exactly once."""
import asyncio
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.auth.keys import new_key
from services.auth.store import (
    BudgetState, KeyExists, KeyRecord, PolicyVersionConflict, RequestIdConflict,
    StoreUnavailable, TenantExists, TenantNotFound, TenantRecord, UsageRecord, UsageRow,
    open_store)

PERIOD = "2026-05"
REPO = Path(__file__).resolve().parents[3]


def tenant(tenant_id: str, at: datetime, policy: bytes = b"\x08\x01policy") -> TenantRecord:
    return TenantRecord(id=tenant_id, display_name=f"{tenant_id} Inc.", created_at=at,
                        policy=policy, policy_version=1)


def key(key_id: str, tenant_id: str, at: datetime) -> KeyRecord:
    return KeyRecord(id=key_id, tenant_id=tenant_id, name=f"{key_id} laptop", role=1,
                     prefix=f"mk_live_{key_id}", secret_hash=key_id.encode() * 2, created_at=at)


def call(request_id: str, cost: int, at: datetime, *, tenant_id: str = "acme",
         model: str = "tiny", labels: dict[str, str] | None = None,
         scopes: tuple[str, ...] = ("tenant",), period: str = PERIOD) -> UsageRecord:
    return UsageRecord(
        request_id=request_id, tenant_id=tenant_id, period=period, model=model,
        replica="generation-1", prompt_tokens=10, completion_tokens=20, cost_micro_usd=cost,
        labels=labels or {}, outcome="stop", time_to_first_token_seconds=0.05,
        total_seconds=0.5, policy_version=1, recorded_at=at, scopes=scopes)


async def reserve(store, request_id: str, amount: int, clock, *, tenant_id: str = "acme",
                  scopes=(("tenant", 10_000),), seconds: float = 60):
    return await store.reserve(request_id, tenant_id, PERIOD, list(scopes), amount,
                               clock.now + timedelta(seconds=seconds))


# Tenants, keys, policies.

async def test_a_tenant_reads_back_as_created_and_tenants_list_by_id(store, clock):
    for tenant_id in ("zeta", "acme"):
        await store.create_tenant(tenant(tenant_id, clock.now))
    assert await store.get_tenant("acme") == tenant("acme", clock.now)
    assert [t.id for t in await store.list_tenants()] == ["acme", "zeta"]


async def test_creating_a_tenant_twice_raises_tenant_exists(store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    with pytest.raises(TenantExists):
        await store.create_tenant(tenant("acme", clock.now, policy=b"other"))
    assert (await store.get_tenant("acme")).policy == tenant("acme", clock.now).policy


async def test_an_unknown_tenant_reads_as_none_and_refuses_every_change(store, clock):
    assert await store.get_tenant("ghost") is None
    for attempt in (lambda: store.update_policy("ghost", b""),
                    lambda: store.create_key(key("k1", "ghost", clock.now)),
                    lambda: store.list_keys("ghost"),
                    lambda: reserve(store, "r1", 1, clock, tenant_id="ghost"),
                    lambda: store.settle(call("r1", 1, clock.now, tenant_id="ghost")),
                    lambda: store.usage("ghost", PERIOD),
                    lambda: store.budget_state("ghost", PERIOD, "tenant")):
        with pytest.raises(TenantNotFound, match="ghost"):
            await attempt()


async def test_updating_a_policy_stores_it_and_bumps_its_version_by_one(store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    assert await store.update_policy("acme", b"v2") == 2
    assert await store.update_policy("acme", b"v3") == 3
    stored = await store.get_tenant("acme")
    assert (stored.policy, stored.policy_version) == (b"v3", 3)


async def test_a_policy_update_that_expects_another_version_changes_nothing(store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    assert await store.update_policy("acme", b"v2", expected_version=1) == 2
    with pytest.raises(PolicyVersionConflict, match="version 2") as conflict:
        await store.update_policy("acme", b"stale", expected_version=1)
    assert conflict.value.current_version == 2
    stored = await store.get_tenant("acme")
    assert (stored.policy, stored.policy_version) == (b"v2", 2)
    with pytest.raises(TenantNotFound):
        await store.update_policy("ghost", b"v", expected_version=1)


async def test_keys_read_back_and_list_oldest_first(store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    await store.create_tenant(tenant("zeta", clock.now))
    later = key("k-later", "acme", clock.now)
    earlier = key("k-early", "acme", clock.now - timedelta(days=1))
    for record in (later, earlier, key("k-zeta", "zeta", clock.now)):
        await store.create_key(record)
    assert await store.get_key("k-later") == later
    assert await store.get_key("nope") is None
    assert await store.list_keys("acme") == [earlier, later]
    with pytest.raises(KeyExists):
        await store.create_key(later)


async def test_revoking_a_key_twice_keeps_the_first_time(store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    await store.create_key(key("k1", "acme", clock.now))
    first = clock.now + timedelta(minutes=1)
    revoked = await store.revoke_key("k1", first)
    assert revoked.revoked_at == first
    assert (await store.revoke_key("k1", first + timedelta(hours=1))).revoked_at == first
    assert await store.get_key("k1") == revoked
    assert await store.revoke_key("nope", first) is None


async def test_the_revision_grows_with_every_change_and_a_second_store_sees_it(
        store, other_store, clock):
    seen = [await other_store.revision()]
    for change in (store.create_tenant(tenant("acme", clock.now)),
                   store.create_key(key("k1", "acme", clock.now)),
                   store.update_policy("acme", b"v2"),
                   store.revoke_key("k1", clock.now)):
        await change
        seen.append(await other_store.revision())
        assert seen[-1] > seen[-2], f"revision did not grow: {seen}"
    await store.get_tenant("acme")
    await store.list_keys("acme")
    assert await other_store.revision() == seen[-1]


# Budgets.

async def test_fifty_racing_reserves_through_two_stores_admit_exactly_ten(
        store, other_store, clock):
    """Two replicas, one budget that covers ten calls: never more than ten are admitted, the
    others are told which budget refused them, and the spend settles to the real costs."""
    await store.create_tenant(tenant("acme", clock.now))
    amount, limit = 1_000, 10_000
    stores = (store, other_store)
    results = await asyncio.gather(*(
        reserve(stores[i % 2], f"r{i}", amount, clock, scopes=[("tenant", limit)])
        for i in range(50)))
    admitted = [f"r{i}" for i, result in enumerate(results) if result.admitted]
    assert len(admitted) == 10
    for result in results:
        if not result.admitted:
            assert (result.scope, result.spent, result.reserved, result.limit) == (
                "tenant", 0, limit, limit)
    assert await other_store.budget_state("acme", PERIOD, "tenant") == BudgetState(0, limit)

    costs = {request_id: amount - 37 * n for n, request_id in enumerate(admitted)}
    recorded = await asyncio.gather(*(
        stores[n % 2].settle(call(request_id, cost, clock.now))
        for n, (request_id, cost) in enumerate(costs.items())))
    assert all(recorded)
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(
        sum(costs.values()), 0)
    [row] = await store.usage("acme", PERIOD)
    assert (row.requests, row.cost_micro_usd) == (10, sum(costs.values()))


async def test_settling_a_request_twice_charges_it_once(store, other_store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    assert (await reserve(store, "r1", 1_000, clock)).admitted
    assert await store.settle(call("r1", 600, clock.now)) is True
    assert await other_store.settle(call("r1", 900, clock.now)) is False
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(600, 0)
    [row] = await store.usage("acme", PERIOD)
    assert (row.requests, row.cost_micro_usd) == (1, 600)


async def test_reserving_a_request_id_again_returns_what_it_holds(store, other_store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    first = await reserve(store, "r1", 1_000, clock)
    again = await reserve(other_store, "r1", 5_000, clock)
    assert first.admitted and again.admitted and again.amount_micro_usd == 1_000
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(0, 1_000)


async def test_a_request_id_settled_or_held_by_another_tenant_is_refused(store, clock):
    for tenant_id in ("acme", "zeta"):
        await store.create_tenant(tenant(tenant_id, clock.now))
    await reserve(store, "held", 1_000, clock)
    with pytest.raises(RequestIdConflict, match="another tenant"):
        await reserve(store, "held", 1_000, clock, tenant_id="zeta")
    with pytest.raises(RequestIdConflict, match="another tenant"):
        await store.settle(call("held", 10, clock.now, tenant_id="zeta"))
    await store.settle(call("held", 10, clock.now))
    with pytest.raises(RequestIdConflict, match="settled already"):
        await reserve(store, "held", 1_000, clock)


async def test_expired_reservations_stop_counting(store, other_store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    assert (await reserve(store, "r1", 1_000, clock, scopes=[("tenant", 1_000)],
                          seconds=60)).admitted
    assert not (await reserve(other_store, "r2", 1, clock, scopes=[("tenant", 1_000)])).admitted
    clock.advance(60)
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(0, 0)
    assert (await reserve(other_store, "r2", 1_000, clock, scopes=[("tenant", 1_000)])).admitted


async def test_releasing_a_reservation_frees_it_without_charging(store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    await reserve(store, "r1", 1_000, clock)
    assert await store.release("r1") is True
    assert await store.release("r1") is False
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(0, 0)
    assert await store.usage("acme", PERIOD) == []


async def test_a_label_budget_refuses_on_its_own_and_settling_charges_every_scope_held(
        store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    both = [("tenant", 10_000), ("label:team=search", 3_000)]
    assert (await reserve(store, "search-1", 2_000, clock, scopes=both)).admitted
    refused = await reserve(store, "search-2", 2_000, clock, scopes=both)
    assert (refused.admitted, refused.scope, refused.spent, refused.reserved, refused.limit) == (
        False, "label:team=search", 0, 2_000, 3_000)
    assert (await reserve(store, "other-1", 2_000, clock, scopes=both[:1])).admitted

    # The reservation's scopes are charged, whatever the record says.
    assert await store.settle(call("search-1", 1_500, clock.now, scopes=()))
    assert await store.settle(call("other-1", 500, clock.now))
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(2_000, 0)
    assert await store.budget_state("acme", PERIOD, "label:team=search") == BudgetState(1_500, 0)


async def test_settling_without_a_reservation_charges_the_records_scopes(store, clock):
    await store.create_tenant(tenant("acme", clock.now))
    assert await store.settle(call("late", 700, clock.now,
                                   scopes=("tenant", "label:team=ads")))
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(700, 0)
    assert await store.budget_state("acme", PERIOD, "label:team=ads") == BudgetState(700, 0)


async def test_usage_sums_the_ledger_by_model_and_by_label(store, clock):
    for tenant_id in ("acme", "zeta"):
        await store.create_tenant(tenant(tenant_id, clock.now))
    for record in (call("a", 100, clock.now, labels={"team": "search", "env": "prod"}),
                   call("b", 200, clock.now, labels={"team": "search"}),
                   call("c", 400, clock.now, model="big", labels={"team": "ads"}),
                   call("d", 800, clock.now, model="big"),
                   call("e", 1_600, clock.now, period="2026-04"),
                   call("f", 3_200, clock.now, tenant_id="zeta")):
        assert await store.settle(record)
    assert await store.usage("acme", PERIOD) == [
        UsageRow("big", "", 2, 20, 40, 1_200), UsageRow("tiny", "", 2, 20, 40, 300)]
    assert await store.usage("acme", PERIOD, group_by_label="team") == [
        UsageRow("", "", 1, 10, 20, 800), UsageRow("", "ads", 1, 10, 20, 400),
        UsageRow("", "search", 2, 20, 40, 300)]
    assert await store.usage("acme", PERIOD, model="big", group_by_label="team") == [
        UsageRow("", "", 1, 10, 20, 800), UsageRow("", "ads", 1, 10, 20, 400)]
    assert await store.usage("acme", "2026-03") == []


# Opening, durability, outages.

async def test_stores_opening_one_new_database_together_share_one_schema(database_url, clock):
    stores = await asyncio.gather(*(open_store(database_url, clock=clock) for _ in range(3)))
    try:
        await stores[0].create_tenant(tenant("acme", clock.now))
        assert await stores[2].get_tenant("acme") == tenant("acme", clock.now)
    finally:
        for store in stores:
            await store.close()
    reopened = await open_store(database_url, clock=clock)
    assert [t.id for t in await reopened.list_tenants()] == ["acme"]
    await reopened.close()


async def test_only_the_key_hash_reaches_the_sqlite_file(tmp_path, clock):
    new = new_key()
    store = await open_store(f"sqlite:///{tmp_path / 'auth.db'}", clock=clock)
    await store.create_tenant(tenant("acme", clock.now))
    await store.create_key(KeyRecord(id=new.key_id, tenant_id="acme", name="ci", role=1,
                                     prefix=new.prefix, secret_hash=new.secret_hash,
                                     created_at=clock.now))
    files = sorted(tmp_path.glob("auth.db*"))
    data = b"".join(path.read_bytes() for path in files)
    await store.close()
    assert new.secret_hash in data, f"the search does not see what was written in {files}"
    random_part = new.secret.removeprefix(new.prefix + "_")
    assert new.secret.encode() not in data and random_part.encode() not in data


async def test_a_settled_call_survives_the_sqlite_writer_being_killed(tmp_path, clock):
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    store = await open_store(url, clock=clock)
    await store.create_tenant(tenant("acme", clock.now))
    await store.close()
    script = textwrap.dedent(f"""
        import asyncio, os, signal
        from datetime import datetime
        from services.auth.store import UsageRecord, open_store

        async def main():
            store = await open_store({url!r})
            at = datetime.fromisoformat({clock.now.isoformat()!r})
            await store.settle(UsageRecord("r1", "acme", {PERIOD!r}, "tiny", "g1", 1, 2, 345,
                                           {{}}, "stop", None, 0.1, 1, at, ("tenant",)))
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'libs'}{os.pathsep}{REPO}"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, timeout=60,
                            capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    store = await open_store(url, clock=clock)
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(345, 0)
    await store.close()


async def test_a_postgres_store_fails_as_unavailable_and_recovers_when_the_server_returns(
        postgres, clock):
    url = postgres.create_database("restarted")
    store = await open_store(url, clock=clock)
    try:
        await store.create_tenant(tenant("acme", clock.now))
        await asyncio.gather(*(store.get_tenant("acme") for _ in range(16)))  # every thread
        postgres.kill()
        try:
            with pytest.raises(StoreUnavailable, match="PostgreSQL"):
                await store.get_tenant("acme")
            with pytest.raises(StoreUnavailable):
                await reserve(store, "r1", 1_000, clock)
        finally:
            postgres.start()
        # Every thread's connection is stale now: each call must still succeed.
        assert all(await asyncio.gather(*(store.get_tenant("acme") for _ in range(16))))
        results = await asyncio.gather(*(reserve(store, f"r{i}", 1_000, clock)
                                         for i in range(16)))
        assert sum(result.admitted for result in results) == 10
    finally:
        await store.close()


async def test_an_unknown_database_url_is_refused_without_echoing_it():
    with pytest.raises(ValueError, match="sqlite:/// or postgresql://") as refused:
        await open_store("mysql://root:hunter2@db/auth")
    assert "hunter2" not in str(refused.value)


async def test_times_without_a_time_zone_are_refused(store):
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.create_tenant(tenant("acme", datetime(2026, 5, 10, 12, 0)))


async def test_a_batch_settles_each_call_once_and_a_conflict_stops_only_itself(store, clock):
    for tenant_id in ("acme", "zeta"):
        await store.create_tenant(tenant(tenant_id, clock.now))
    await reserve(store, "held", 1_000, clock, scopes=[("tenant", 10_000)])
    await store.settle(call("before", 7, clock.now))
    recorded = await store.settle_many([
        call("zeta-1", 5, clock.now, tenant_id="zeta"),
        call("held", 30, clock.now, tenant_id="zeta"),  # held for acme: not recorded
        call("before", 7, clock.now),  # settled already
        call("held", 40, clock.now),
        call("acme-2", 2, clock.now),
    ])
    assert recorded == [True, False, False, True, True]
    assert await store.budget_state("acme", PERIOD, "tenant") == BudgetState(7 + 40 + 2, 0)
    by_tenant = {t: sum(row.cost_micro_usd for row in await store.usage(t, PERIOD))
                 for t in ("acme", "zeta")}
    assert by_tenant == {"acme": 7 + 40 + 2, "zeta": 5}

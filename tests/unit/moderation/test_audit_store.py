"""The verdict trail's SQLite store, on a real file: per-tenant chains that stay gapless when two
replicas share the file, checkpoints by count and by time, and tampering found by the verifier."""
import asyncio
import sqlite3
import stat

import pytest

from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.audit_chain import GENESIS_HASH, hash_of_record, verify_chain
from meshllm.audit_signing import AuditSigner
from services.moderation.audit_store import AuditStore, VerdictEntry

SECOND = 1_000_000_000


class Clock:
    """Unix nanoseconds that move only when a test says so."""

    def __init__(self):
        self.now_ns = 1_760_000_000 * SECOND

    def __call__(self) -> int:
        return self.now_ns


def entry(tenant: str, request_id: str, score: float = 0.5) -> VerdictEntry:
    return VerdictEntry(request_id=request_id, tenant_id=tenant, stage=m.STAGE_OUTPUT,
                        category=m.CATEGORY_SECRETS, action=m.ACTION_REDACT,
                        detector="rules/aws-key", score=score, time_ns=1_760_000_000_000_000_001,
                        policy_version=2)


async def trail(store: AuditStore, tenant: str, from_sequence: int = 1) -> list:
    return [item async for item in store.export(tenant, from_sequence)]


def records_of(items: list) -> list[m.AuditRecord]:
    return [item for item in items if isinstance(item, m.AuditRecord)]


def checkpoint_sequences(items: list) -> list[int]:
    return [item.sequence for item in items if isinstance(item, m.AuditCheckpoint)]


@pytest.fixture
def signer(tmp_path) -> AuditSigner:
    return AuditSigner.from_file(tmp_path / "keys" / "audit.key")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def open_store(tmp_path, signer, clock):
    opened = []

    async def open_(**settings) -> AuditStore:
        settings = {"checkpoint_every_records": 100, "checkpoint_every_seconds": 10.0,
                    "clock_ns": clock, **settings}
        store = await AuditStore.open(tmp_path / "trail" / "audit.db", signer, **settings)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


def test_the_signing_key_is_made_once_with_mode_0600_and_read_back(tmp_path):
    path = tmp_path / "new" / "dir" / "audit.key"
    first = AuditSigner.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = AuditSigner.from_file(path)
    assert again.key_id == first.key_id and len(first.key_id) == 16
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


async def test_two_tenants_chain_independently_and_each_sees_only_its_own(open_store, signer):
    store = await open_store()
    await store.append([entry("acme", "a1"), entry("globex", "g1"), entry("acme", "a2")])
    await store.append([entry("globex", "g2"), entry("acme", "a3")])
    acme, globex = await trail(store, "acme"), await trail(store, "globex")
    assert [(r.sequence, r.request_id) for r in records_of(acme)] == [
        (1, "a1"), (2, "a2"), (3, "a3")]
    assert [(r.sequence, r.request_id) for r in records_of(globex)] == [(1, "g1"), (2, "g2")]
    assert {r.tenant_id for r in records_of(globex)} == {"globex"}
    assert records_of(acme)[0].previous_hash == GENESIS_HASH
    assert verify_chain(acme, signer.public_key).ok
    assert verify_chain(globex, signer.public_key).ok


async def test_verdicts_for_lists_one_requests_records_of_one_tenant(open_store):
    store = await open_store()
    await store.append([entry("acme", "r1", 0.25), entry("acme", "r2"),
                        entry("acme", "r1", 0.75), entry("globex", "r1")])
    records = await store.verdicts_for("acme", "r1")
    assert [(r.sequence, r.score, r.tenant_id) for r in records] == [
        (1, 0.25, "acme"), (3, 0.75, "acme")]
    assert records[0].time.ToNanoseconds() == 1_760_000_000_000_000_001
    assert await store.verdicts_for("acme", "nope") == []


async def test_two_replicas_sharing_the_file_appending_at_once_give_gapless_valid_chains(
        open_store, signer):
    first, second = await open_store(), await open_store()
    await asyncio.gather(*(
        store.append([entry(tenant, f"{name}-{tenant}-{batch}-{index}") for index in range(5)
                      for tenant in ("acme", "globex")])
        for batch in range(20) for name, store in (("one", first), ("two", second))))
    for tenant in ("acme", "globex"):
        items = await trail(first, tenant)
        assert [r.sequence for r in records_of(items)] == list(range(1, 201))
        check = verify_chain(items, signer.public_key)
        assert check.ok, check.reason
        assert check.checkpoints == 2  # after the first batch, and 100 records later
        assert records_of(await trail(second, tenant)) == records_of(items)


async def test_a_chain_is_checkpointed_every_n_records(open_store, signer):
    store = await open_store(checkpoint_every_records=5)
    for index in range(12):
        await store.append([entry("acme", f"r{index}")])
    items = await trail(store, "acme")
    # The first record gets one at once (a new chain has none to be recent), then every 5.
    assert checkpoint_sequences(items) == [1, 6, 11]
    assert verify_chain(items, signer.public_key).ok
    checkpoint = items[items.index(records_of(items)[5]) + 1]
    assert checkpoint.sequence == 6 and checkpoint.key_id == signer.key_id


async def test_a_chain_is_checkpointed_when_its_last_checkpoint_is_old(open_store, clock):
    store = await open_store(checkpoint_every_seconds=10.0)
    await store.append([entry("acme", "r1")])
    clock.now_ns += 9 * SECOND
    await store.append([entry("acme", "r2")])
    clock.now_ns += 2 * SECOND
    await store.append([entry("acme", "r3")])
    assert checkpoint_sequences(await trail(store, "acme")) == [1, 3]


async def test_an_idle_chain_gets_its_tail_checkpointed(open_store, clock):
    store = await open_store(checkpoint_every_seconds=10.0)
    await store.append([entry("acme", "r1")])
    await store.append([entry("acme", "r2"), entry("acme", "r3")])
    await store.checkpoint_idle_chains()
    assert checkpoint_sequences(await trail(store, "acme")) == [1]  # too soon
    clock.now_ns += 10 * SECOND
    await store.checkpoint_idle_chains()
    await store.checkpoint_idle_chains()  # nothing new since: no second checkpoint
    assert checkpoint_sequences(await trail(store, "acme")) == [1, 3]


async def test_an_export_pages_through_the_chain_and_can_start_later(open_store, signer):
    store = await open_store(checkpoint_every_records=4, export_page_size=3)
    await store.append([entry("acme", f"r{index}") for index in range(10)])
    for index in range(10, 14):
        await store.append([entry("acme", f"r{index}")])
    items = await trail(store, "acme")
    assert [(type(i).__name__, i.sequence) for i in items][9:12] == [
        ("AuditRecord", 10), ("AuditCheckpoint", 10), ("AuditRecord", 11)]
    assert len(records_of(items)) == 14 and verify_chain(items, signer.public_key).ok
    later = await trail(store, "acme", from_sequence=11)
    assert records_of(later)[0].sequence == 11
    assert verify_chain(later, signer.public_key, from_sequence=11).ok


async def test_a_reopened_store_keeps_everything_and_continues_the_chain(open_store, signer):
    store = await open_store()
    await store.append([entry("acme", "r1"), entry("acme", "r2")])
    await store.close()
    reopened = await open_store()
    await reopened.append([entry("acme", "r3")])
    items = await trail(reopened, "acme")
    assert [r.request_id for r in records_of(items)] == ["r1", "r2", "r3"]
    assert verify_chain(items, signer.public_key).ok


@pytest.fixture
async def filled(open_store, tmp_path):
    """Ten records of acme with checkpoints at 1, 5 and 9, then the file to tamper with."""
    store = await open_store(checkpoint_every_records=4)
    for index in range(1, 11):
        await store.append([entry("acme", f"r{index}")])
    return store, sqlite3.connect(tmp_path / "trail" / "audit.db", isolation_level=None)


async def test_a_record_updated_in_the_file_is_named_as_changed(filled, signer):
    store, db = filled
    db.execute("UPDATE audit_records SET action = ? WHERE sequence = 3", (m.ACTION_ALLOW,))
    check = verify_chain(await trail(store, "acme"), signer.public_key)
    assert (check.ok, check.bad_sequence, check.request_id) == (False, 3, "r3")
    assert "record 3 (request 'r3'), after record 2 (request 'r2'), was changed" in check.reason


async def test_a_record_deleted_from_the_file_is_named_as_missing(filled, signer):
    store, db = filled
    db.execute("DELETE FROM audit_records WHERE sequence = 7")
    check = verify_chain(await trail(store, "acme"), signer.public_key)
    assert (check.ok, check.bad_sequence) == (False, 7)
    assert check.reason.startswith("record 7 is missing (deleted): record 8 (request 'r8')")


async def test_records_cut_from_the_end_of_the_file_are_named_as_truncated(filled, signer):
    store, db = filled
    db.execute("DELETE FROM audit_records WHERE sequence > 6")
    check = verify_chain(await trail(store, "acme"), signer.public_key)
    assert (check.ok, check.bad_sequence) == (False, 7)
    assert "the trail ends after record 6 (request 'r6'), before the last signed checkpoint" \
           in check.reason


async def test_a_record_rewritten_with_its_hash_recomputed_is_found(filled, signer):
    store, db = filled
    db.execute("UPDATE audit_records SET request_id = 'r4-forged' WHERE sequence = 4")
    forged = records_of(await trail(store, "acme"))[3]
    db.execute("UPDATE audit_records SET hash = ? WHERE sequence = 4", (hash_of_record(forged),))
    check = verify_chain(await trail(store, "acme"), signer.public_key)
    assert (check.ok, check.bad_sequence, check.request_id) == (False, 5, "r5")
    assert "does not chain to record 4 (request 'r4-forged')" in check.reason


async def test_a_checkpoint_edited_in_the_file_no_longer_verifies(filled, signer):
    store, db = filled
    db.execute("UPDATE audit_checkpoints SET time_ns = time_ns + 1 WHERE sequence = 5")
    check = verify_chain(await trail(store, "acme"), signer.public_key)
    assert (check.ok, check.bad_sequence) == (False, 5)
    assert "the checkpoint at sequence 5 has an invalid signature" == check.reason

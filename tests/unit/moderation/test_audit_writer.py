"""The audit writer: verdicts queue without waiting, go to the store in batches, survive a
store that fails for a while, and are written (or loudly dropped) on drain."""
import asyncio

import pytest
import structlog

from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.audit_chain import verify_chain
from meshllm.audit_signing import AuditSigner
from services.moderation.audit_store import AuditStore, VerdictEntry
from services.moderation.audit_writer import AuditWriter


def entry(request_id: str, tenant: str = "acme") -> VerdictEntry:
    return VerdictEntry(request_id=request_id, tenant_id=tenant, stage=m.STAGE_INPUT,
                        category=m.CATEGORY_UNSPECIFIED, action=m.ACTION_ALLOW, detector="",
                        score=0.0, time_ns=1, policy_version=1)


class FailingFirst:
    """A real store whose first `failures` appends fail, as a locked or full disk would."""

    def __init__(self, store: AuditStore, failures: int):
        self.store = store
        self.failures = failures
        self.batches: list[int] = []

    async def append(self, entries: list[VerdictEntry]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk I/O error")
        self.batches.append(len(entries))
        await self.store.append(entries)

    async def checkpoint_idle_chains(self) -> None:
        await self.store.checkpoint_idle_chains()


@pytest.fixture
async def store(tmp_path):
    signer = AuditSigner.from_file(tmp_path / "audit.key")
    opened = await AuditStore.open(tmp_path / "audit.db", signer)
    yield opened
    await opened.close()


async def request_ids(store: AuditStore, tenant: str = "acme") -> list[str]:
    return [item.request_id async for item in store.export(tenant)
            if isinstance(item, m.AuditRecord)]


async def test_submitted_verdicts_are_written_in_batches_in_order(store):
    flaky = FailingFirst(store, failures=0)
    writer = AuditWriter(flaky, flush_seconds=0.01, max_batch=4)
    writer.start()
    for index in range(10):
        writer.submit(entry(f"r{index}"))
    assert writer.pending == 10  # submit only queued them
    await writer.drain()
    assert await request_ids(store) == [f"r{index}" for index in range(10)]
    assert max(flaky.batches) <= 4


async def test_the_flush_timer_writes_a_partial_batch_without_drain(store):
    writer = AuditWriter(store, flush_seconds=0.01, max_batch=100)
    writer.start()
    writer.submit(entry("r1"))
    for _ in range(200):
        if await request_ids(store):
            break
        await asyncio.sleep(0.01)
    assert await request_ids(store) == ["r1"]
    await writer.drain()


async def test_a_failing_store_is_retried_until_the_batch_is_written(store):
    flaky = FailingFirst(store, failures=3)
    writer = AuditWriter(flaky, flush_seconds=0.01, max_batch=10)
    writer.start()
    with structlog.testing.capture_logs() as logs:
        writer.submit(entry("r1"))
        writer.submit(entry("r2"))
        for _ in range(300):
            if not writer.pending:
                break
            await asyncio.sleep(0.01)
        await writer.drain()
    assert await request_ids(store) == ["r1", "r2"]
    assert [log["attempt"] for log in logs if log["event"].startswith("audit write failed")] \
        == [1, 2, 3]


async def test_a_full_queue_drops_new_verdicts_and_says_so(store):
    writer = AuditWriter(store, max_batch=10, max_pending=3)  # not started: nothing drains
    with structlog.testing.capture_logs() as logs:
        for index in range(5):
            writer.submit(entry(f"r{index}"))
    assert writer.pending == 3
    assert [log["event"] for log in logs] == ["audit verdicts dropped: the trail will miss them"]
    await writer.drain()
    assert await request_ids(store) == ["r0", "r1", "r2"]


async def test_drain_gives_up_on_a_store_that_keeps_failing_and_logs_the_loss(store):
    writer = AuditWriter(FailingFirst(store, failures=100), flush_seconds=10.0)
    writer.start()
    writer.submit(entry("r1"))
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(writer.drain(), timeout=5)
    assert any(log["event"] == "audit writer stopped; verdicts were dropped from the trail"
               and log["dropped"] == 1 for log in logs)
    assert await request_ids(store) == []


async def test_two_tenants_written_through_one_writer_each_verify(store, tmp_path):
    writer = AuditWriter(store, flush_seconds=0.01, max_batch=7)
    writer.start()
    for index in range(30):
        writer.submit(entry(f"r{index}", tenant=("acme", "globex")[index % 2]))
    await writer.drain()
    public_key = AuditSigner.from_file(tmp_path / "audit.key").public_key
    for tenant in ("acme", "globex"):
        items = [item async for item in store.export(tenant)]
        assert verify_chain(items, public_key).ok
        assert len(await request_ids(store, tenant)) == 15

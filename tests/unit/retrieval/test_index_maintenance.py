"""Indexes brought up to date once writes to a collection pause, or now and then under a
steady load; a failure does not stop the maintenance."""
import threading
import time

from services.retrieval.index_maintenance import IndexMaintenance
from services.retrieval.store import CollectionMissing, CollectionSpec


def spec(uid: str) -> CollectionSpec:
    return CollectionSpec("acme", uid, uid, 384, "m", 128, 16)


class RecordingStore:
    def __init__(self, fail: set[str] = frozenset(), missing: set[str] = frozenset()):
        self.optimized: list[tuple[str, float]] = []
        self.fail, self.missing = fail, missing
        self.done = threading.Event()

    def optimize(self, collection: CollectionSpec) -> None:
        self.optimized.append((collection.uid, time.monotonic()))
        self.done.set()
        if collection.uid in self.missing:
            raise CollectionMissing(collection.name)
        if collection.uid in self.fail:
            raise RuntimeError("disk full")


def test_a_collection_is_optimized_once_its_writes_pause():
    store = RecordingStore()
    maintenance = IndexMaintenance(store, quiet_seconds=0.2, max_delay_seconds=10)
    try:
        started = time.monotonic()
        for _ in range(5):
            maintenance.written(spec("a"))
            time.sleep(0.05)
        assert store.done.wait(2)
        ((uid, at),) = store.optimized
        assert uid == "a" and at - started >= 0.2 + 0.2
        time.sleep(0.3)
        assert len(store.optimized) == 1  # nothing written since
    finally:
        maintenance.stop()


def test_a_steady_load_still_gets_its_indexes_updated():
    store = RecordingStore()
    maintenance = IndexMaintenance(store, quiet_seconds=0.5, max_delay_seconds=0.3)
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            maintenance.written(spec("a"))
            time.sleep(0.02)
        assert store.optimized, "never optimized under a steady load"
    finally:
        maintenance.stop()


def test_a_failure_or_a_deleted_collection_does_not_stop_the_others():
    store = RecordingStore(fail={"broken"}, missing={"gone"})
    maintenance = IndexMaintenance(store, quiet_seconds=0.05, max_delay_seconds=1)
    try:
        for uid in ("broken", "gone", "fine"):
            maintenance.written(spec(uid))
        deadline = time.monotonic() + 2
        while len(store.optimized) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(uid for uid, _ in store.optimized) == ["broken", "fine", "gone"]
    finally:
        maintenance.stop()

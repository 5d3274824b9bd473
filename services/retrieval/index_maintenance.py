"""Indexes brought up to date after writes, off the request path.

A store searches rows written since its last `optimize` exactly, beside its index: correct,
but slower as they pile up. A collection written to is optimized once writes to it pause for
`quiet_seconds`, or every `max_delay_seconds` under a steady load, one collection at a time on
a daemon thread (an index build can take a minute on 100k chunks; a stopping process does not
wait for it, and the store commits an index whole or not at all)."""
import threading
import time

from meshllm.logging import get_logger
from services.retrieval.store import CollectionMissing, CollectionSpec, VectorStore

log = get_logger(__name__)


class IndexMaintenance:
    def __init__(self, store: VectorStore, quiet_seconds: float = 2.0,
                 max_delay_seconds: float = 30.0):
        self._store = store
        self._quiet = quiet_seconds
        self._max_delay = max_delay_seconds
        self._due: dict[str, tuple[CollectionSpec, float, float]] = {}
        """uid: (spec, first unoptimized write, last write), monotonic."""
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="index-maintenance", daemon=True)
        self._thread.start()

    def written(self, spec: CollectionSpec) -> None:
        now = time.monotonic()
        with self._changed:
            first = self._due.get(spec.uid, (spec, now, now))[1]
            self._due[spec.uid] = (spec, first, now)
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                spec = self._next_due()
                while spec is None and not self._stopped:
                    self._changed.wait(timeout=self._wait_seconds())
                    spec = self._next_due()
                if self._stopped:
                    return
                del self._due[spec.uid]
            started = time.monotonic()
            try:
                self._store.optimize(spec)
            except CollectionMissing:
                continue
            except Exception:  # the next write tries again; searches stay correct meanwhile
                log.exception("optimize_failed", collection=spec.name, tenant=spec.tenant)
                continue
            log.info("collection_optimized", collection=spec.name, tenant=spec.tenant,
                     seconds=round(time.monotonic() - started, 3))

    def _next_due(self) -> CollectionSpec | None:
        now = time.monotonic()
        for spec, first, last in self._due.values():
            if now - last >= self._quiet or now - first >= self._max_delay:
                return spec
        return None

    def _wait_seconds(self) -> float | None:
        if not self._due:
            return None
        now = time.monotonic()
        return max(0.01, min(min(self._quiet - (now - last), self._max_delay - (now - first))
                             for _, first, last in self._due.values()))

"""Calls for a pool at zero: held while the autoscaler starts a replica, and told so.

A pool the autoscaler scaled to zero has no endpoint, so Envoy could only refuse the call.
The router holds it instead, bounded per pool, within the call's deadline, and the stream
says at once that it waits and why (a waiting event), again every few seconds with the time
waited; the started event then carries the cold start's length. The held calls count as
demand for the pool: the router reports them with its heartbeat (at once for the first
one), which is how the autoscaler learns that a pool at zero is wanted.

When a replica is up, the held calls are let go no faster than it admits them: at most
`release_per_replica` per ready replica at a time, the next one when an earlier one has its
started event (the replica took it) or ended. A new replica admits only so many calls at
once; the rest would bounce off its admission cap (RESOURCE_EXHAUSTED) together.

The registry lists a new replica a moment before Envoy can route to it. A released call that
Envoy could give to no replica, before any event, is held again (for at most
`rehold_seconds` after its first release) rather than failed."""
import asyncio
import time
from collections import Counter
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import replace

import grpc

from meshllm.api.inference.v1 import inference_pb2
from meshllm.protos import duration
from meshllm.errors import CallRefused
from meshllm.logging import get_logger
from services.router.errors import RequestRejected
from services.router.generation_client import NO_REPLICA_REASON
from services.router.model_catalog import ModelCatalog
from services.router.pipeline import Events, GenerationCall, Next

_DEADLINE_MARGIN_SECONDS = 0.1
"""Refuse this long before the caller's deadline, so that it reads why, not its own timeout."""
log = get_logger(__name__)


def waiting_event(waited: float) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(waiting=inference_pb2.WaitingEvent(
        reason=inference_pb2.WAIT_REASON_COLD_START, waited=duration(waited),
        message=f"waiting {waited:.1f} s for a replica of this model to start (the model was "
                "scaled to zero)"))


def _found_no_replica(refused: CallRefused, started: bool) -> bool:
    """Envoy had no replica to give the call to, and nothing was streamed: it can be held."""
    return not started and refused.reason == NO_REPLICA_REASON


class ColdStartHold:
    """The stream stage that holds calls for pools at zero (see the module)."""

    def __init__(self, catalog: ModelCatalog, max_held_per_pool: int = 20,
                 waiting_event_seconds: float = 2.0, poll_seconds: float = 0.1,
                 release_per_replica: int = 4, rehold_seconds: float = 10.0,
                 on_first_held: Callable[[], None] = lambda: None):
        self._catalog = catalog
        self._max_held = max_held_per_pool
        self._waiting_event_seconds = waiting_event_seconds
        self._poll_seconds = poll_seconds
        self._release_per_replica = release_per_replica
        self._rehold_seconds = rehold_seconds
        """How long after its first release a call that found no replica is held again."""
        self._on_first_held = on_first_held
        self._held_calls: Counter[str] = Counter()
        self._released: Counter[str] = Counter()
        """Held calls let go that have no started event yet, per pool."""
        self._release_changed = asyncio.Condition()

    def held_calls(self) -> dict[str, int]:
        """Calls held now, per model: the demand the heartbeat reports."""
        return {model: count for model, count in self._held_calls.items() if count}

    def __call__(self, call: GenerationCall, next_stage: Next) -> Events:
        if not call.model.pool.at_zero:
            return self._unless_just_scaled_to_zero(call, next_stage)
        return self._held_stream(call, next_stage)

    async def _unless_just_scaled_to_zero(self, call: GenerationCall,
                                          next_stage: Next) -> Events:
        """The stream of a pool the router believes has replicas. The router's view may be a
        refresh old: if Envoy found no replica, and the registry now says the pool went to
        zero, the call is held like any other for it."""
        started = False
        try:
            async with aclosing(next_stage(call)) as stream:
                async for event in stream:
                    started = True
                    yield event
            return
        except CallRefused as refused:
            if not _found_no_replica(refused, started):
                raise
            # At most one registry call per poll, however many calls fail together.
            pool = (await self._catalog.pools(max_age=self._poll_seconds)).get(
                call.model.pool.name)
            if pool is None or not pool.at_zero:
                raise
        call.model = replace(call.model, pool=pool)
        async with aclosing(self._held_stream(call, next_stage)) as held:
            async for event in held:
                yield event

    async def _held_stream(self, call: GenerationCall, next_stage: Next) -> Events:
        model = call.model.pool.name
        if self._held_calls[model] >= self._max_held:
            raise RequestRejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {model!r} is starting from zero and {self._held_calls[model]} calls "
                "already wait for it; retry in a few seconds", reason="COLD_START_QUEUE_FULL",
                retry_after=self._waiting_event_seconds)
        began = time.perf_counter()
        async with aclosing(self._hold(call, model, began, announce=True)) as waiting:
            async for event in waiting:
                yield event
        first_release = time.perf_counter()
        while True:
            call.cold_start = time.perf_counter() - began
            started = False
            try:
                async with aclosing(self._released_stream(call, model, next_stage)) as events:
                    async for event in events:
                        started = True
                        yield event
                return
            except CallRefused as refused:
                # The registry lists a new replica a moment before Envoy routes to it (its
                # endpoint still on the way, or its first health check): hold again.
                if not _found_no_replica(refused, started) \
                        or time.perf_counter() - first_release > self._rehold_seconds:
                    raise
                log.info("cold_start_call_held_again", model=model, detail=refused.message)
            await asyncio.sleep(min(self._poll_seconds, self._seconds_left(call)))
            async with aclosing(self._hold(call, model, began)) as waiting:
                async for event in waiting:
                    yield event

    async def _hold(self, call: GenerationCall, model: str, began: float,
                    announce: bool = False) -> Events:
        """Counts the call as held until the pool has a replica and a release slot is free;
        yields a waiting event at once if `announce`, and every few seconds meanwhile (while
        it waits for a replica and while it waits for a slot). The count goes up before the
        first yield: nothing runs between the bound's check and it. Callers close it
        (aclosing), so a cancelled call stops counting at once."""
        self._held_calls[model] += 1
        try:
            if self._held_calls[model] == 1:
                self._on_first_held()
            if announce:
                yield waiting_event(0.0)
            next_event = time.perf_counter() + self._waiting_event_seconds
            while True:
                self._check_deadline(call, model, began)
                pool = (await self._catalog.pools(max_age=self._poll_seconds)).get(model)
                replicas = pool.ready_replicas if pool is not None and not pool.at_zero else 0
                if self._released[model] < replicas * self._release_per_replica:
                    self._released[model] += 1
                    return
                now = time.perf_counter()
                if now >= next_event:
                    yield waiting_event(now - began)
                    next_event = now + self._waiting_event_seconds
                # Until a released call frees its slot, or the next look at the pool.
                async with self._release_changed:
                    try:
                        await asyncio.wait_for(self._release_changed.wait(), min(
                            self._poll_seconds, self._seconds_left(call)))
                    except TimeoutError:
                        pass
        finally:
            self._held_calls[model] -= 1

    async def _released_stream(self, call: GenerationCall, model: str,
                               next_stage: Next) -> Events:
        """The released call's stream; its release slot is freed at its started event."""
        holds_slot = True
        try:
            async with aclosing(next_stage(call)) as stream:
                async for event in stream:
                    if holds_slot and type(event) is not bytes and event.HasField("started"):
                        holds_slot = False
                        await self._let_next_go(model)
                    yield event
        finally:
            if holds_slot:
                await self._let_next_go(model)

    async def _let_next_go(self, model: str) -> None:
        self._released[model] -= 1
        if self._released[model] <= 0:
            del self._released[model]
        async with self._release_changed:
            self._release_changed.notify()

    @staticmethod
    def _seconds_left(call: GenerationCall) -> float:
        remaining = call.time_remaining()
        return float("inf") if remaining is None else max(0.0, remaining - _DEADLINE_MARGIN_SECONDS)

    def _check_deadline(self, call: GenerationCall, model: str, began: float) -> None:
        if self._seconds_left(call) <= 0:
            raise RequestRejected(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the call's deadline passed after {time.perf_counter() - began:.1f} s waiting "
                f"for a replica of model {model!r} to start (the model was scaled to zero); "
                "retry with a longer deadline", reason="COLD_START_DEADLINE")

"""The router's view of the models the registry has replicas for, refreshed on demand."""
import asyncio
import time
from dataclasses import replace

import grpc

from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from services.router.model_choice import ModelPool


def pools_from_replicas(replicas, models_at_zero=()) -> dict[str, ModelPool]:
    """Groups generation replicas by model; a pool's context is its smallest replica's. The
    pools the autoscaler has at zero are listed too, with no replica and no known context."""
    pools: dict[str, ModelPool] = {
        model: ModelPool(name=model, ready_replicas=0, max_context_tokens=0, at_zero=True)
        for model in models_at_zero}
    for replica in replicas:
        known = pools.get(replica.model)
        if known is not None and known.at_zero:
            known = None
        pools[replica.model] = ModelPool(
            name=replica.model,
            ready_replicas=(known.ready_replicas if known else 0) + 1,
            max_context_tokens=min(replica.max_context_tokens,
                                   known.max_context_tokens if known else replica.max_context_tokens),
        )
    return pools


def keep_recent_pools(previous: dict[str, ModelPool], fresh: dict[str, ModelPool],
                      missing_since: dict[str, float], now: float,
                      forget_after: float) -> dict[str, ModelPool]:
    """The registry's answer, plus pools it stopped listing less than `forget_after` ago.

    A control plane that just restarted lists nothing until replicas re-register (one
    heartbeat), while Envoy still has their endpoints: the router must not call those
    models unknown meanwhile. Such pools are kept, with no ready replica counted. The time
    counts from the first answer that left a pool out, not from the last that listed it:
    while the control plane was away there was no answer at all, and an outage longer than
    `forget_after` must not make the first answer after it forget every pool."""
    for name in fresh:
        missing_since.pop(name, None)
    for name in previous:
        if name not in fresh:
            missing_since.setdefault(name, now)
    recent = {name: replace(pool, ready_replicas=0) for name, pool in previous.items()
              if name not in fresh and now - missing_since[name] < forget_after}
    for name in [name for name in missing_since if name not in recent]:
        del missing_since[name]
    return {**recent, **fresh}


class ModelCatalog:
    """Asks the registry at most once per `refresh_seconds`; keeps the last answer if the
    control plane is unreachable, so the data path does not depend on it being up."""

    def __init__(self, channel: grpc.aio.Channel, refresh_seconds: float, forget_after: float):
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self._refresh_seconds = refresh_seconds
        self._forget_after = forget_after
        self._pools: dict[str, ModelPool] = {}
        self._missing_since: dict[str, float] = {}
        self._fetched_at = float("-inf")
        self._refreshing = asyncio.Lock()

    async def pools(self, max_age: float | None = None) -> dict[str, ModelPool]:
        """The pools, from an answer at most `max_age` (default: refresh_seconds) old."""
        max_age = self._refresh_seconds if max_age is None else max_age
        if self._fresh(max_age):
            return self._pools
        async with self._refreshing:  # one registry call per refresh, however many requests wait
            if not self._fresh(max_age):
                await self._refresh()
        return self._pools

    def _fresh(self, max_age: float) -> bool:
        return time.monotonic() - self._fetched_at < max_age

    async def _refresh(self) -> None:
        try:
            reply = await self._stub.ListReplicas(
                registry_pb2.ListReplicasRequest(service="generation"), timeout=1)
            fresh = pools_from_replicas(reply.replicas, reply.models_at_zero)
            self._pools = keep_recent_pools(self._pools, fresh,
                                            self._missing_since, time.monotonic(),
                                            self._forget_after)
        except grpc.aio.AioRpcError:
            pass  # keep the last answer; ask again after the next refresh interval, not sooner
        self._fetched_at = time.monotonic()

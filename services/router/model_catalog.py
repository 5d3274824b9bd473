"""The router's view of the models the registry has replicas for, refreshed on demand."""
import asyncio
import time

import grpc

from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from services.router.model_choice import ModelPool


def pools_from_replicas(replicas) -> dict[str, ModelPool]:
    """Groups generation replicas by model; a pool's context is its smallest replica's."""
    pools: dict[str, ModelPool] = {}
    for replica in replicas:
        known = pools.get(replica.model)
        pools[replica.model] = ModelPool(
            name=replica.model,
            ready_replicas=(known.ready_replicas if known else 0) + 1,
            max_context_tokens=min(replica.max_context_tokens,
                                   known.max_context_tokens if known else replica.max_context_tokens),
        )
    return pools


class ModelCatalog:
    """Asks the registry at most once per `refresh_seconds`; keeps the last answer if the
    control plane is unreachable, so the data path does not depend on it being up."""

    def __init__(self, channel: grpc.aio.Channel, refresh_seconds: float):
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self._refresh_seconds = refresh_seconds
        self._pools: dict[str, ModelPool] = {}
        self._fetched_at = float("-inf")
        self._refreshing = asyncio.Lock()

    async def pools(self) -> dict[str, ModelPool]:
        if self._fresh():
            return self._pools
        async with self._refreshing:  # one registry call per refresh, however many requests wait
            if not self._fresh():
                await self._refresh()
        return self._pools

    def _fresh(self) -> bool:
        return time.monotonic() - self._fetched_at < self._refresh_seconds

    async def _refresh(self) -> None:
        try:
            reply = await self._stub.ListReplicas(
                registry_pb2.ListReplicasRequest(service="generation"), timeout=1)
            self._pools = pools_from_replicas(reply.replicas)
        except grpc.aio.AioRpcError:
            pass  # keep the last answer; ask again after the next refresh interval, not sooner
        self._fetched_at = time.monotonic()

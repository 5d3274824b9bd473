"""The router's view of the models the registry has replicas for, refreshed on demand."""
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

    async def pools(self) -> dict[str, ModelPool]:
        if time.monotonic() - self._fetched_at < self._refresh_seconds:
            return self._pools
        try:
            reply = await self._stub.ListReplicas(
                registry_pb2.ListReplicasRequest(service="generation"), timeout=1)
        except grpc.aio.AioRpcError:
            return self._pools
        self._pools = pools_from_replicas(reply.replicas)
        self._fetched_at = time.monotonic()
        return self._pools

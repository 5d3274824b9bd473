"""A replica's lease with the control plane's registry: register, heartbeat, deregister."""
import asyncio

import grpc

from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from meshllm.logging import get_logger

log = get_logger(__name__)


class ReplicaRegistration:
    """Keeps one replica registered while it serves.

    `start` returns once the registry has the replica (retrying while the control plane is
    not up yet); a background task then renews the lease at a third of its TTL and
    registers again if the lease was lost (e.g. the control plane restarted)."""

    def __init__(self, controlplane_address: str, replica: registry_pb2.Replica,
                 retry_seconds: float = 0.2):
        self._address = controlplane_address
        self.replica = replica
        self._retry_seconds = retry_seconds
        self._channel: grpc.aio.Channel | None = None
        self._stub: registry_pb2_grpc.RegistryServiceStub | None = None
        self._task: asyncio.Task | None = None
        self._interval = 1.0

    async def start(self, timeout: float = 60.0) -> None:
        self._channel = grpc.aio.insecure_channel(self._address)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        await asyncio.wait_for(self._register_until_accepted(), timeout)
        self._task = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def _register_until_accepted(self) -> None:
        while True:
            try:
                reply = await self._stub.RegisterReplica(
                    registry_pb2.RegisterReplicaRequest(replica=self.replica), timeout=2)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                await asyncio.sleep(self._retry_seconds)
                continue
            self._interval = max(reply.lease_ttl.ToTimedelta().total_seconds() / 3, 0.05)
            log.info("registered", replica_id=self.replica.replica_id,
                     controlplane=self._address, heartbeat_seconds=self._interval)
            return

    async def _renew_forever(self) -> None:
        request = registry_pb2.HeartbeatRequest(replica_id=self.replica.replica_id)
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._stub.Heartbeat(request, timeout=self._interval * 2)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("lease_lost", replica_id=self.replica.replica_id)
                    await self._register_until_accepted()
                else:
                    log.warning("heartbeat_failed", code=error.code().name,
                                detail=error.details())

    async def stop(self) -> None:
        """Deregisters at once so no new calls arrive; best effort if the registry is gone."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._stub is not None:
            try:
                await self._stub.DeregisterReplica(
                    registry_pb2.DeregisterReplicaRequest(replica_id=self.replica.replica_id),
                    timeout=2)
            except grpc.aio.AioRpcError as error:
                log.warning("deregister_failed", code=error.code().name)
        if self._channel is not None:
            await self._channel.close()

"""The local supervisor's side of autoscaling: replicas of each service started and stopped as
the control plane's autoscaler asks (ScalingService) — the generation pool a LocalMesh serves,
its routers, its auth replicas.

A replica asked for is started in the background, so a slow start (vLLM takes tens of
seconds) does not hold up the next decision. One no longer wanted is stopped with SIGTERM:
it deregisters (Envoy stops sending it calls), lets its streams finish within its drain
grace, and exits, so scaling down cuts no stream. The newest replica goes first. A replica
that died (killed, crashed) is forgotten at the next look, so the next decision replaces it."""
import asyncio
from collections.abc import Awaitable, Callable, Mapping

import grpc

from deploy.local.supervisor import ManagedProcess
from meshllm.api.controlplane.v1 import scaling_pb2, scaling_pb2_grpc
from meshllm.logging import get_logger
from meshllm.tasks import cancel_and_wait

log = get_logger(__name__)


class ScaledProcesses:
    """One service's replicas on this machine, kept at the count the autoscaler wants."""

    def __init__(self, replicas: dict[str, ManagedProcess],
                 new_replica: Callable[[], ManagedProcess],
                 start: Callable[[ManagedProcess], Awaitable[object]],
                 stop: Callable[[ManagedProcess], Awaitable[None]]):
        self.replicas = replicas
        """The mesh's replicas of the service by id, started or starting; `new_replica` adds
        one."""
        self._new_replica = new_replica
        self._start = start
        self._stop = stop
        self._starting: set[asyncio.Task] = set()
        self._stopping: set[asyncio.Task] = set()

    def reconcile(self, desired: int) -> None:
        for replica_id, process in list(self.replicas.items()):
            if process.process is not None and process.process.returncode is not None:
                del self.replicas[replica_id]
                log.warning("replica_died", replica_id=replica_id,
                            returncode=process.process.returncode)
        for _ in range(desired - len(self.replicas)):
            self._background(self._starting, self._start_one(self._new_replica()))
        if desired < len(self.replicas) and not self._starting:
            for replica_id in list(self.replicas)[desired:]:
                process = self.replicas.pop(replica_id)
                log.info("replica_scaled_down", replica_id=replica_id, replicas=desired)
                self._background(self._stopping, self._stop(process))

    async def close(self) -> None:
        for task in [*self._starting, *self._stopping]:
            await cancel_and_wait(task)

    async def _start_one(self, process: ManagedProcess) -> None:
        try:
            await self._start(process)
        except RuntimeError as error:  # it did not become ready; the next decision retries
            self.replicas.pop(process.name, None)
            log.error("replica_start_failed", replica_id=process.name, detail=str(error))
            return
        log.info("replica_scaled_up", replica_id=process.name, replicas=len(self.replicas))

    @staticmethod
    def _background(tasks: set[asyncio.Task], work: Awaitable) -> None:
        task = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def follow_autoscaler(controlplane_address: str, services: Mapping[str, ScaledProcesses],
                            poll_seconds: float = 0.25) -> None:
    """Keeps each service's processes at the autoscaler's count until cancelled."""
    async with grpc.aio.insecure_channel(controlplane_address) as channel:
        stub = scaling_pb2_grpc.ScalingServiceStub(channel)
        try:
            while True:
                try:
                    status = await stub.GetScalingStatus(
                        scaling_pb2.GetScalingStatusRequest(), timeout=2)
                except grpc.aio.AioRpcError as error:
                    log.warning("scaling_status_unavailable", code=error.code().name)
                else:
                    wanted: dict[str, int] = {}
                    for unit in status.units:
                        # A mesh runs one generation pool; the others' counts are not ours.
                        wanted[unit.service] = max(wanted.get(unit.service, 0),
                                                   unit.desired_replicas)
                    for service, processes in services.items():
                        if service in wanted:
                            processes.reconcile(wanted[service])
                await asyncio.sleep(poll_seconds)
        finally:
            for processes in services.values():
                await processes.close()

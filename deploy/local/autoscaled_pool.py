"""The local supervisor's side of autoscaling: generation replicas started and stopped as the
control plane's autoscaler asks (ScalingService), for the one pool a LocalMesh serves.

A replica asked for is started in the background, so a slow start (vLLM takes tens of
seconds) does not hold up the next decision. One no longer wanted is stopped with SIGTERM:
it deregisters (Envoy stops sending it calls), lets its streams finish within its drain
grace, and exits, so scaling down cuts no stream. The newest replica goes first."""
import asyncio
from collections.abc import Awaitable, Callable

import grpc

from deploy.local.supervisor import ManagedProcess
from meshllm.api.controlplane.v1 import scaling_pb2, scaling_pb2_grpc
from meshllm.logging import get_logger
from meshllm.tasks import cancel_and_wait

log = get_logger(__name__)


class AutoscaledPool:
    def __init__(self, controlplane_address: str, replicas: dict[str, ManagedProcess],
                 new_replica: Callable[[], ManagedProcess],
                 start: Callable[[ManagedProcess], Awaitable[object]],
                 stop: Callable[[ManagedProcess], Awaitable[None]], poll_seconds: float = 0.25):
        self._address = controlplane_address
        self._replicas = replicas
        """The mesh's generation replicas by id, started or starting; `new_replica` adds one."""
        self._new_replica = new_replica
        self._start = start
        self._stop = stop
        self._poll_seconds = poll_seconds
        self._starting: set[asyncio.Task] = set()
        self._stopping: set[asyncio.Task] = set()

    async def run(self) -> None:
        """Follows the autoscaler until cancelled; then waits for starts and stops under way."""
        async with grpc.aio.insecure_channel(self._address) as channel:
            stub = scaling_pb2_grpc.ScalingServiceStub(channel)
            try:
                while True:
                    try:
                        status = await stub.GetScalingStatus(
                            scaling_pb2.GetScalingStatusRequest(), timeout=2)
                    except grpc.aio.AioRpcError as error:
                        log.warning("scaling_status_unavailable", code=error.code().name)
                    else:
                        pools = [u for u in status.units if u.service == "generation"]
                        if pools:
                            self._reconcile(max(unit.desired_replicas for unit in pools))
                    await asyncio.sleep(self._poll_seconds)
            finally:
                for task in [*self._starting, *self._stopping]:
                    await cancel_and_wait(task)

    def _reconcile(self, desired: int) -> None:
        for _ in range(desired - len(self._replicas)):
            self._background(self._starting, self._start_one(self._new_replica()))
        if desired < len(self._replicas) and not self._starting:
            for replica_id in list(self._replicas)[desired:]:
                process = self._replicas.pop(replica_id)
                log.info("replica_scaled_down", replica_id=replica_id, replicas=desired)
                self._background(self._stopping, self._stop(process))

    async def _start_one(self, process: ManagedProcess) -> None:
        try:
            await self._start(process)
        except RuntimeError as error:  # it did not become ready; the next decision retries
            self._replicas.pop(process.name, None)
            log.error("replica_start_failed", replica_id=process.name, detail=str(error))
            return
        log.info("replica_scaled_up", replica_id=process.name, replicas=len(self._replicas))

    @staticmethod
    def _background(tasks: set[asyncio.Task], work: Awaitable) -> None:
        task = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

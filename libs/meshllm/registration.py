"""A replica's lease with the control plane's registry: register, heartbeat, deregister.

The lease is renewed from a thread of its own, over a synchronous gRPC channel of its own,
never from the service's event loop. A busy replica's loop can go seconds between turns (a
burst of new streams and cancels on a saturated 2-core host, vLLM's output handling, the
garbage collector), and a heartbeat queued behind that work is a heartbeat missed: seen
here, the leases of a live router and a live replica ran out under load. A thread blocked on
a socket holds no GIL and gets to run within the interpreter's switch interval (5 ms)
however busy the loop is. A longer lease alone would only move the threshold; the thread
removes the dependence on the loop. This is the one place that mixes a thread into the
asyncio code (STYLE: threads only where needed, in one place).
"""
import asyncio
import threading
import time
from collections.abc import Callable, Mapping

import grpc
from google.protobuf import duration_pb2

from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from meshllm.call_scope import calls_in_flight
from meshllm.channels import RECONNECT_OPTIONS
from meshllm.logging import get_logger
from meshllm.supervised_thread import DeathHandler, SupervisedThread

log = get_logger(__name__)

# Heartbeats per lease: four in a row may go missing before the lease runs out.
HEARTBEATS_PER_LEASE = 5
CALL_TIMEOUT_SECONDS = 2.0


class RegistrationRefused(Exception):
    """The registry answered INVALID_ARGUMENT: it cannot route this replica as described."""


def heartbeat_interval(lease_ttl: duration_pb2.Duration) -> float:
    return max(lease_ttl.ToTimedelta().total_seconds() / HEARTBEATS_PER_LEASE, 0.05)


class ReplicaRegistration:
    """Keeps one replica registered while it serves.

    `start` returns once the registry has the replica (retrying while the control plane is
    not up yet). A supervised thread then renews the lease every fifth of its TTL, registers
    again when the lease was lost (a restarted control plane starts empty), and keeps trying
    while the control plane is away. If that thread dies (the registry refuses the replica,
    or a bug), `on_renewal_died(reason)` runs on the loop: pass MeshServer.set_not_serving,
    so that Envoy's health checks take out a replica nobody renews.
    """

    def __init__(self, controlplane_address: str, replica: registry_pb2.Replica,
                 retry_seconds: float = 0.2, on_renewal_died: DeathHandler | None = None,
                 held_calls: Callable[[], Mapping[str, int]] | None = None):
        self._address = controlplane_address
        self.replica = replica
        self._retry_seconds = retry_seconds
        self._on_renewal_died = on_renewal_died
        self._held_calls = held_calls
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._channel: grpc.Channel | None = None
        self._stub: registry_pb2_grpc.RegistryServiceStub | None = None
        self._renewal: SupervisedThread | None = None
        self.heartbeat_seconds = 1.0

    @property
    def renewal_died(self) -> str | None:
        """Why the renewal thread died, or None while it runs (or after `stop`)."""
        return self._renewal.died if self._renewal is not None else None

    async def start(self, timeout: float = 60.0) -> None:
        # Reconnects within 1 s of the registry's return (grpc's default grows to 120 s).
        self._channel = grpc.insecure_channel(self._address, options=RECONNECT_OPTIONS)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        try:
            await asyncio.to_thread(self._register_until_accepted, time.monotonic() + timeout)
        except BaseException:
            # A start that failed or was cancelled leaves nothing behind: closing the channel
            # ends a registration the thread may still have in flight.
            self._stopping.set()
            self._channel.close()
            raise
        self._renewal = SupervisedThread(
            self._renew_until_stopped, name=f"lease-renewal-{self.replica.replica_id}",
            loop=asyncio.get_running_loop(), on_died=self._on_renewal_died)
        self._renewal.start()

    def report_now(self) -> None:
        """Sends the next heartbeat (and the demand it reports) at once rather than on time:
        a router that starts holding calls for a pool at zero tells the autoscaler now."""
        self._wake.set()

    def _demand(self) -> registry_pb2.HeartbeatRequest:
        request = registry_pb2.HeartbeatRequest(replica_id=self.replica.replica_id,
                                                in_flight=calls_in_flight())
        if self._held_calls is not None:
            request.held_calls.update(self._held_calls())
        return request

    async def stop(self) -> None:
        """Stops renewing, then deregisters at once so that no new calls arrive; best effort
        if the registry is gone."""
        self._stopping.set()
        self._wake.set()
        if self._channel is None:
            return
        # Closing ends a heartbeat or registration in flight at once, so the thread is gone
        # before the deregistration (a registration it sent later would add the replica back).
        self._channel.close()
        if self._renewal is not None:
            await self._renewal.join()
        async with grpc.aio.insecure_channel(self._address) as channel:
            try:
                await registry_pb2_grpc.RegistryServiceStub(channel).DeregisterReplica(
                    registry_pb2.DeregisterReplicaRequest(replica_id=self.replica.replica_id),
                    timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                log.warning("deregister_failed", replica_id=self.replica.replica_id,
                            code=error.code().name, detail=error.details())

    def _register_until_accepted(self, deadline: float | None) -> None:
        """Registers, retrying every `retry_seconds` until accepted, stopped, or `deadline`."""
        request = registry_pb2.RegisterReplicaRequest(replica=self.replica)
        while not self._stopping.is_set():
            timeout = CALL_TIMEOUT_SECONDS
            if deadline is not None:
                timeout = max(0.01, min(timeout, deadline - time.monotonic()))
            try:
                reply = self._stub.RegisterReplica(request, timeout=timeout, wait_for_ready=True)
            except grpc.RpcError as error:
                if self._stopping.is_set():
                    return
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise RegistrationRefused(error.details()) from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the control plane at {self._address} did not accept the "
                        f"registration in time: {error.code().name}: {error.details()}"
                    ) from None
                self._stopping.wait(self._retry_seconds)
                continue
            self.heartbeat_seconds = heartbeat_interval(reply.lease_ttl)
            log.info("registered", replica_id=self.replica.replica_id,
                     controlplane=self._address, heartbeat_seconds=self.heartbeat_seconds)
            return

    def _renew_until_stopped(self) -> None:
        try:
            self._renew()
        except Exception:
            if self._stopping.is_set():
                return  # `stop` closed the channel under a call: not a death
            raise

    def _renew(self) -> None:
        failing_since: float | None = None
        wait = self.heartbeat_seconds
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopping.is_set():
                return
            request = self._demand()
            try:
                # wait_for_ready: while the control plane is away, the call waits for the
                # channel to reconnect instead of failing at once, so the first heartbeat
                # after its return goes out within the reconnect back-off.
                reply = self._stub.Heartbeat(request, timeout=self.heartbeat_seconds,
                                             wait_for_ready=True)
            except grpc.RpcError as error:
                if self._stopping.is_set():
                    return  # `stop` closed the channel under this call
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("lease_lost", replica_id=self.replica.replica_id,
                                detail=error.details())
                    self._register_until_accepted(deadline=None)
                    failing_since, wait = None, self.heartbeat_seconds
                    continue
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("heartbeat_failing", replica_id=self.replica.replica_id,
                                code=error.code().name, detail=error.details())
                wait = self._retry_seconds
                continue
            if failing_since is not None:
                log.info("heartbeat_recovered", replica_id=self.replica.replica_id,
                         after_seconds=round(time.monotonic() - failing_since, 3))
                failing_since = None
            self.heartbeat_seconds = heartbeat_interval(reply.lease_ttl)
            wait = self.heartbeat_seconds


async def register_server(server, replica_id: str) -> ReplicaRegistration | None:
    """Registers a started MeshServer (`server.service`, on its bound port) with the control
    plane its settings name, for a service whose replicas are all alike (not generation's:
    they carry a model). A replica whose renewal dies turns NOT_SERVING. None when the settings
    name no control plane."""
    settings = server.settings
    if not settings.controlplane_address:
        return None
    registration = ReplicaRegistration(settings.controlplane_address, registry_pb2.Replica(
        replica_id=replica_id or f"{server.service}-{settings.host}-{server.port}",
        service=server.service, host=settings.host, port=server.port),
        on_renewal_died=server.set_not_serving)
    await registration.start()
    return registration

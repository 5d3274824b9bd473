"""gRPC glue: RegistryService onto ReplicaRegistry, ADS onto serve_stream."""
from types import MappingProxyType

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from meshllm.protos import duration
from services.controlplane.ads import AdsCallbacks, serve_stream
from services.controlplane.registry import (GENERATION_SERVICE, InvalidReplica, Replica,
                                            ReplicaRegistry)
from services.controlplane.scaling import MeshScaling
from services.controlplane.snapshot import SnapshotCache


def replica_from_proto(message: registry_pb2.Replica) -> Replica:
    return Replica(
        replica_id=message.replica_id, service=message.service, host=message.host,
        port=message.port, model=message.model,
        max_context_tokens=message.max_context_tokens,
        labels=MappingProxyType(dict(message.labels)))


def replica_to_proto(replica: Replica) -> registry_pb2.Replica:
    return registry_pb2.Replica(
        replica_id=replica.replica_id, service=replica.service, host=replica.host,
        port=replica.port, model=replica.model,
        max_context_tokens=replica.max_context_tokens, labels=dict(replica.labels))


async def _abort_invalid(context: grpc.aio.ServicerContext, error: InvalidReplica) -> None:
    """INVALID_ARGUMENT with a google.rpc.BadRequest naming the field."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=error.field, description=str(error))]))
    await context.abort_with_status(rpc_status.to_status(status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=str(error), details=[detail])))


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: ReplicaRegistry, scaling: MeshScaling | None = None,
                 report_pools_at_zero: bool = False):
        self._registry = registry
        self._scaling = scaling
        self._report_pools_at_zero = report_pools_at_zero

    async def RegisterReplica(self, request, context):
        try:
            ttl = self._registry.register(replica_from_proto(request.replica))
        except InvalidReplica as error:
            await _abort_invalid(context, error)
        return registry_pb2.RegisterReplicaResponse(lease_ttl=duration(ttl))

    async def Heartbeat(self, request, context):
        if not request.replica_id:
            await _abort_invalid(context, InvalidReplica("replica_id is required", "replica_id"))
        if not self._registry.heartbeat(request.replica_id):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"replica {request.replica_id!r} has no lease (it expired or was never "
                "registered): lease expired, register again")
        if self._scaling is not None:
            self._scaling.report(request.replica_id, request.in_flight, request.held_calls)
        return registry_pb2.HeartbeatResponse(lease_ttl=duration(self._registry.lease_ttl))

    async def DeregisterReplica(self, request, context):
        # Idempotent: a replica that drains after its lease ran out still gets OK.
        self._registry.deregister(request.replica_id)
        return registry_pb2.DeregisterReplicaResponse()

    async def ListReplicas(self, request, context):
        # What Envoy balances over, so the router's view of the models matches its routes.
        replicas = self._registry.routable(service=request.service, model=request.model)
        response = registry_pb2.ListReplicasResponse(
            replicas=[replica_to_proto(r) for r in replicas])
        # Only where something starts replicas for them: a call held for a pool nobody starts
        # would wait for nothing.
        if self._report_pools_at_zero and self._scaling is not None \
                and request.service in ("", GENERATION_SERVICE):
            response.models_at_zero.extend(
                model for model in self._scaling.models_at_zero()
                if not request.model or model == request.model)
        return response


class AggregatedDiscoveryServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """State-of-the-world ADS. Delta xDS is not offered (the bootstrap asks for GRPC)."""

    def __init__(self, cache: SnapshotCache, callbacks: AdsCallbacks | None = None):
        self._cache = cache
        self.callbacks = callbacks or AdsCallbacks()

    async def StreamAggregatedResources(self, request_iterator, context):
        async for response in serve_stream(request_iterator, self._cache, self.callbacks):
            yield response

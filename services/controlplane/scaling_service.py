"""gRPC glue: ScalingService onto MeshScaling."""
import grpc
from google.protobuf import timestamp_pb2

from meshllm.api.controlplane.v1 import scaling_pb2, scaling_pb2_grpc
from meshllm.errors import CallRefused
from services.controlplane.registry import GENERATION_SERVICE
from services.controlplane.scaling import MeshScaling, Unit, UnitState


def _state(unit: UnitState) -> int:
    if unit.desired == 0 and unit.ready == 0:
        return scaling_pb2.SCALING_STATE_SCALED_TO_ZERO
    if unit.ready < unit.desired:
        return scaling_pb2.SCALING_STATE_SCALING_UP
    if unit.ready > unit.desired:
        return scaling_pb2.SCALING_STATE_SCALING_DOWN
    return scaling_pb2.SCALING_STATE_STEADY


def unit_to_proto(key: Unit, unit: UnitState) -> scaling_pb2.ScaledUnit:
    settings, decision = unit.settings, unit.decision
    message = scaling_pb2.ScaledUnit(
        service=key[0], pool=key[1], desired_replicas=unit.desired, ready_replicas=unit.ready,
        min_replicas=settings.min_replicas, max_replicas=settings.max_replicas,
        pinned=unit.autoscaler.pinned is not None, in_flight=unit.in_flight, held_calls=unit.held,
        load=(unit.in_flight + unit.held) / max(unit.ready, 1) / settings.target_concurrency,
        state=_state(unit))
    if decision is not None:
        at = timestamp_pb2.Timestamp()
        at.FromNanoseconds(int(unit.decided_at * 1e9))  # wall clock, for people
        message.last_decision.CopyFrom(scaling_pb2.ScalingDecision(
            at=at, desired_replicas=decision.desired, reason=decision.reason,
            panic=decision.panic, stable_concurrency=decision.stable_concurrency,
            panic_concurrency=decision.panic_concurrency))
    return message


class ScalingServicer(scaling_pb2_grpc.ScalingServiceServicer):
    def __init__(self, scaling: MeshScaling):
        self._scaling = scaling

    async def GetScalingStatus(self, request, context):
        units = sorted(self._scaling.units().items(),
                       key=lambda item: (item[0][0] == GENERATION_SERVICE, item[0]))
        return scaling_pb2.GetScalingStatusResponse(
            units=[unit_to_proto(key, unit) for key, unit in units])

    async def SetScale(self, request, context):
        try:
            key = self._scaling.find(request.service, request.pool)
        except KeyError:
            known = ", ".join(f"{s}/{p}" if p else s for s, p in self._scaling.units()) or "none"
            asked = f"{request.service}/{request.pool}" if request.pool else request.service
            raise CallRefused(
                grpc.StatusCode.NOT_FOUND,
                f"no scaled service or pool {asked!r} (a generation pool must be named when "
                f"there are several); known: {known}", reason="UNIT_NOT_FOUND",
                field="service") from None
        unit = self._scaling.units()[key]
        if not request.unpin and not 0 <= request.replicas <= unit.settings.max_replicas:
            raise CallRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"replicas must be between 0 and {key[0]}'s max_replicas "
                f"({unit.settings.max_replicas}), got {request.replicas}",
                reason="REPLICAS_OUT_OF_RANGE", field="replicas")
        self._scaling.pin(key[0], key[1], None if request.unpin else request.replicas)
        return scaling_pb2.SetScaleResponse(unit=unit_to_proto(key, self._scaling.units()[key]))

"""KEDA's external scaler (`externalscaler.ExternalScaler`) onto the autoscaler's live state.

On Kubernetes, KEDA scales each generation pool's Deployment, to zero and back, on the mesh's
own signal. A pool's ScaledObject points KEDA's trigger at the control plane's gRPC port
(`scalerAddress`) and names the pool in the trigger's metadata (`pool: <model>`; `service:`
picks another scaled unit, generation by default). KEDA then asks:

- IsActive / StreamIsActive: does the pool need a replica at all? Yes while calls are in
  flight on it or held for it, or while the autoscaler wants replicas (it keeps one warm until
  the pool's idle timeout). KEDA moves a pool between 0 and 1 replicas on this alone.
  StreamIsActive (KEDA's `external-push` trigger) pushes every change the autoscaler's tick
  sees, so a call held for a pool at zero starts a replica at once, not at KEDA's next poll.
- GetMetricSpec / GetMetrics: from one replica up, KEDA's HPA sizes the pool on its
  concurrency (calls in flight plus held) against the pool's target_concurrency per replica,
  the ratio the autoscaler uses too.
"""
import asyncio
import math
import re
from collections.abc import Mapping
from typing import Protocol

import grpc

from meshllm.api.externalscaler import externalscaler_pb2, externalscaler_pb2_grpc
from meshllm.errors import CallRefused
from services.controlplane.registry import GENERATION_SERVICE
from services.controlplane.scaling import Unit, UnitState

POOL_KEY = "pool"
SERVICE_KEY = "service"
_NOT_A_NAME_CHARACTER = re.compile(r"[^a-z0-9]+")


class ScalingState(Protocol):
    """What the scaler reads: MeshScaling's units, as its last tick left them."""

    def units(self) -> Mapping[Unit, UnitState]: ...


def demand(unit: UnitState) -> int:
    """The pool's concurrency: calls in flight on its replicas plus calls held for it."""
    return unit.in_flight + unit.held


def is_active(unit: UnitState) -> bool:
    return demand(unit) > 0 or unit.desired > 0


def metric_name(unit: Unit) -> str:
    """A metric name Kubernetes accepts (lowercase letters, digits, dashes) for the unit."""
    service, pool = unit
    words = _NOT_A_NAME_CHARACTER.sub("-", f"{service} {pool} concurrency".lower())
    return words.strip("-")


def unit_named(ref: externalscaler_pb2.ScaledObjectRef) -> Unit:
    """The unit a ScaledObject's trigger metadata names."""
    service = ref.scalerMetadata.get(SERVICE_KEY, GENERATION_SERVICE)
    pool = ref.scalerMetadata.get(POOL_KEY, "")
    if service == GENERATION_SERVICE and not pool:
        raise CallRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"ScaledObject {ref.namespace}/{ref.name}: its trigger metadata must name the "
            f"generation pool it scales ({POOL_KEY}: <model>)",
            reason="POOL_REQUIRED", field=f"scalerMetadata.{POOL_KEY}")
    return service, pool if service == GENERATION_SERVICE else ""


class KedaExternalScaler(externalscaler_pb2_grpc.ExternalScalerServicer):
    """Answers KEDA from `scaling.units()`; StreamIsActive looks again every `poll_seconds`
    (the autoscaler's tick: nothing changes in between)."""

    def __init__(self, scaling: ScalingState, poll_seconds: float):
        self._scaling = scaling
        self._poll_seconds = poll_seconds

    def _unit(self, ref: externalscaler_pb2.ScaledObjectRef) -> tuple[Unit, UnitState]:
        key = unit_named(ref)
        units = self._scaling.units()
        if key not in units:
            known = ", ".join(f"{s}/{p}" if p else s for s, p in units) or "none"
            hint = (f" (a pool at zero is known only when the scaling config names it: "
                    f"[pools.\"{key[1]}\"])" if key[0] == GENERATION_SERVICE else "")
            raise CallRefused(
                grpc.StatusCode.NOT_FOUND,
                f"ScaledObject {ref.namespace}/{ref.name} names {'/'.join(filter(None, key))}, "
                f"which the control plane does not scale{hint}; known: {known}",
                reason="UNIT_NOT_FOUND", field=f"scalerMetadata.{POOL_KEY}")
        return key, units[key]

    async def IsActive(self, request, context):
        _, unit = self._unit(request)
        return externalscaler_pb2.IsActiveResponse(result=is_active(unit))

    async def StreamIsActive(self, request, context):
        _, unit = self._unit(request)
        active = is_active(unit)
        yield externalscaler_pb2.IsActiveResponse(result=active)
        while True:
            await asyncio.sleep(self._poll_seconds)
            _, unit = self._unit(request)
            if is_active(unit) != active:
                active = not active
                yield externalscaler_pb2.IsActiveResponse(result=active)

    async def GetMetricSpec(self, request, context):
        key, unit = self._unit(request)
        target = unit.settings.target_concurrency
        return externalscaler_pb2.GetMetricSpecResponse(metricSpecs=[
            externalscaler_pb2.MetricSpec(metricName=metric_name(key),
                                          targetSize=math.ceil(target), targetSizeFloat=target)])

    async def StreamMetricSpec(self, request, context):
        # The specs never change while the control plane runs (its settings are read once).
        # UNIMPLEMENTED is KEDA's cue to read them with GetMetricSpec; anything else it
        # counts as a failing scaler.
        raise CallRefused(grpc.StatusCode.UNIMPLEMENTED,
                          "metric specs are fixed while the control plane runs: read them "
                          "with GetMetricSpec", reason="METRIC_SPECS_FIXED")
        yield  # unreachable: makes this an async generator, as a stream handler is

    async def GetMetrics(self, request, context):
        key, unit = self._unit(request.scaledObjectRef)
        value = demand(unit)
        return externalscaler_pb2.GetMetricsResponse(metricValues=[
            externalscaler_pb2.MetricValue(metricName=metric_name(key), metricValue=value,
                                           metricValueFloat=float(value))])

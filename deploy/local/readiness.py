"""When is the mesh up? When the README's calls work through the public listener.

Processes that say READY are not enough: Envoy reports itself ready even when it could not
open a listener (LDS NACK, e.g. "Address already in use"), and the public port could then
belong to some other program that answers. So the mesh is up once Envoy has bound both
listeners on the configured ports, and a real reflection `list`, ListModels and a one-token
Generate for every served model succeed through the public port."""
import asyncio
import time

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from deploy.local.config import port_setting
from deploy.local.envoy_admin import bound_listeners, rejected_listeners
from deploy.local.mesh import MeshOptions
from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc
from services.controlplane.resources import MESH_LISTENER, PUBLIC_LISTENER

PUBLIC_SERVICE = "meshllm.inference.v1.InferenceService"
CALL_TIMEOUT_SECONDS = 30.0
RETRY_SECONDS = 0.5


class MeshNotServing(Exception):
    """The mesh started but cannot serve the public API; the message says what to do."""


async def wait_until_serving(options: MeshOptions, timeout: float, api_key: str) -> None:
    """Returns once the public listener serves real calls; raises MeshNotServing when a
    listener was rejected (at once) or the calls still fail after `timeout` seconds."""
    listener_ports = {PUBLIC_LISTENER: ("public", options.ports.public),
                      MESH_LISTENER: ("mesh", options.ports.mesh)}
    deadline = time.monotonic() + timeout
    waiting_for = "Envoy's listeners"
    while time.monotonic() < deadline:
        rejected = await rejected_listeners(options.ports.admin)
        for listener, (name, port) in listener_ports.items():
            if listener in rejected:
                raise MeshNotServing(
                    f"Envoy could not open its {name} listener on port {port} "
                    f"({rejected[listener]}): stop whatever holds the port, or set "
                    f"{port_setting(name)} to a free port")
        bound = await bound_listeners(options.ports.admin)
        if all(bound.get(listener) == port for listener, (_, port) in listener_ports.items()):
            waiting_for = await _public_calls_fail(f"localhost:{options.ports.public}", api_key)
            if waiting_for is None:
                return
        await asyncio.sleep(RETRY_SECONDS)
    raise MeshNotServing(
        f"the processes started, but localhost:{options.ports.public} did not serve a call "
        f"within {timeout:.0f} s (last: {waiting_for}); the lines above say why "
        f"(MESHLLM_LOCAL_READY_TIMEOUT_SECONDS gives it longer)")


async def _public_calls_fail(endpoint: str, api_key: str) -> str | None:
    """None when the README's calls work through `endpoint` with `api_key`, else what failed."""
    metadata = (("authorization", f"Bearer {api_key}"),)
    try:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            if PUBLIC_SERVICE not in await _reflected_services(channel, metadata):
                return f"reflection through {endpoint} does not list {PUBLIC_SERVICE}"
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            models = (await stub.ListModels(inference_pb2.ListModelsRequest(),
                                            timeout=CALL_TIMEOUT_SECONDS,
                                            metadata=metadata)).models
            served = [model.name for model in models if model.ready_replicas]
            if not served:
                return "ListModels lists no model with a ready replica yet"
            for model in served:
                if not await _one_token(stub, model, metadata):
                    return f"a one-token Generate on {model!r} ended without a finished event"
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}: {error.details()}"
    return None


async def _reflected_services(channel: grpc.aio.Channel, metadata) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    services = set()
    async for answer in stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT_SECONDS,
                                                  metadata=metadata):
        services.update(service.name for service in answer.list_services_response.service)
    return services


async def _one_token(stub: inference_pb2_grpc.InferenceServiceStub, model: str,
                     metadata) -> bool:
    request = inference_pb2.GenerateRequest(
        model=model, prompt="ready?", sampling=inference_pb2.SamplingParams(max_tokens=1))
    events = [event async for event in stub.Generate(request, timeout=CALL_TIMEOUT_SECONDS,
                                                     metadata=metadata)]
    return bool(events) and events[-1].WhichOneof("event") == "finished"

"""`python -m services.generation`: one generation replica.

Reads settings once, starts the engine, serves, registers with the control plane, prints
`READY port=<port>`, and on SIGTERM/SIGINT drains: deregister, let streams finish, stop the
engine (its engine-core child process goes with it).

The engine core is a child process in this process's group. On SIGKILL of this process
nothing here runs and vLLM's engine core does not watch its parent, so it would be orphaned:
supervisors start this process as a group leader (`start_new_session=True` / `setsid`) and
kill the group (`os.killpg`), which takes the engine core and its worker down too.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys

from meshllm.api.controlplane.v1 import registry_pb2
from meshllm.api.generation.v1 import generation_pb2_grpc
from meshllm.logging import get_logger, logging_config_file
from meshllm.observability import configure_observability
from meshllm.registration import ReplicaRegistration
from meshllm.server import MeshServer
from services.generation.config import TINY_MODEL_DIR, GenerationSettings
from services.generation.engine import Engine
from services.generation.server import GenerationServicer
from services.generation.warm_start import is_warm_start, wait_for_assignment

log = get_logger("services.generation")


def build_engine(settings: GenerationSettings) -> Engine:
    if settings.engine == "sim":
        from services.generation.sim_engine import DEFAULT_MAX_RUNNING_REQUESTS, SimEngine

        return SimEngine(
            model_name=settings.model_name(),
            max_context_tokens=settings.max_model_len or 2048,
            time_to_first_token=settings.sim_time_to_first_token_seconds,
            inter_token_latency=settings.sim_inter_token_latency_seconds,
            max_running_requests=settings.max_running_requests or DEFAULT_MAX_RUNNING_REQUESTS,
            load_seconds=settings.sim_load_seconds,
            text=settings.sim_text,
            echo_prompt=settings.sim_echo_prompt,
        )
    from services.generation.vllm_engine import VllmEngine

    if settings.is_default_tiny_model() and not (TINY_MODEL_DIR / "config.json").exists():
        from services.generation import tiny_model

        log.info("building_tiny_model", directory=str(TINY_MODEL_DIR))
        tiny_model.build(TINY_MODEL_DIR)
    return VllmEngine(
        model=settings.model,
        served_model_name=settings.model_name(),
        max_model_len=settings.max_model_len or None,
        kv_cache_gib=settings.kv_cache_gib,
        max_num_seqs=settings.max_running_requests or None,
        stream_interval=settings.stream_interval,
    )


async def serve(settings: GenerationSettings) -> None:
    # Loading the model takes a while; a SIGTERM meanwhile is honoured once it is loaded
    # (the engine must be shut down, not orphaned), so catch it from the start.
    stop_early = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_early.set)

    engine = build_engine(settings)
    log.info("engine_starting", engine=settings.engine, model=settings.model)
    await engine.start()
    try:
        if stop_early.is_set():
            log.info("stopped_before_ready")
            return
        server = MeshServer(settings, service="generation")
        server.add_service(
            generation_pb2_grpc.add_GenerationServiceServicer_to_server,
            GenerationServicer.for_engine(engine, settings.replica_id, settings),
            "meshllm.generation.v1.GenerationService",
        )
        port = await server.start()
        if stop_early.is_set():  # a signal that came before the server took signals over
            server.request_shutdown()
        registration = None
        if settings.controlplane_address:
            registration = ReplicaRegistration(
                settings.controlplane_address,
                registry_pb2.Replica(
                    replica_id=settings.replica_id,
                    service="generation",
                    host=settings.host,
                    port=port,
                    model=engine.model_name,
                    max_context_tokens=engine.max_context_tokens,
                    labels={"engine": settings.engine},
                ),
                on_renewal_died=server.set_not_serving,
            )
            await registration.start()
        log.info("ready", port=port, replica_id=settings.replica_id, model=engine.model_name,
                 engine=settings.engine, max_context_tokens=engine.max_context_tokens)
        print(f"READY port={port}", flush=True)
        await server.wait_for_shutdown_signal()
        log.info("shutdown_requested")
        if registration is not None:
            await registration.stop()
        await server.drain()
    finally:
        await engine.shutdown()
        log.info("engine_stopped")


def main() -> None:
    if is_warm_start():
        wait_for_assignment()
    settings = GenerationSettings()
    configure_observability("generation", settings)
    # vLLM applies a logging dictConfig of its own in this process and in every process it
    # starts (engine core, workers), in its own text format on stdout, where only our READY
    # line belongs. Handing it ours, as the file it reads (the one form that reaches spawned
    # children, which inherit no handlers), keeps every line JSON on stderr. An operator's
    # own VLLM_LOGGING_CONFIG_PATH wins; with VLLM_CONFIGURE_LOGGING=0 vLLM refuses a file
    # and its records reach our root handler anyway (forked children inherit it).
    with logging_config_file("generation", settings.log_level) as config:
        if os.environ.get("VLLM_CONFIGURE_LOGGING", "1") != "0":
            os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(config))
        asyncio.run(serve(settings))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

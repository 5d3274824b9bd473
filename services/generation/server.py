"""The GenerationService servicer: protos in, engine calls, protos out."""
from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import aclosing

import grpc

from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from meshllm.errors import CallRefused
from meshllm.generate_input import InvalidInput, check_fits_context, check_input, check_sampling
from meshllm.logging import get_logger
from meshllm.protos import duration
from meshllm.request_context import current_request_id
from services.generation.admission import AdmissionGate
from services.generation.chunk_pacing import ChunkPacer
from services.generation.config import GenerationSettings
from services.generation.engine import (
    ChatTurn,
    Delta,
    Engine,
    Finished,
    FinishReason,
    GenerationError,
    GenerationRequest,
    Started,
    Step,
)

log = get_logger(__name__)

ROLE_NAMES = {
    inference_pb2.ROLE_SYSTEM: "system",
    inference_pb2.ROLE_USER: "user",
    inference_pb2.ROLE_ASSISTANT: "assistant",
}
FINISH_REASONS = {
    FinishReason.STOP: inference_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: inference_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORTED: inference_pb2.FINISH_REASON_ABORTED,
}


# Shorter waits cost more in timer wake-ups than they save in messages.
MIN_PACING_SLEEP = 0.0005


def refusal(error: GenerationError) -> CallRefused:
    return CallRefused(grpc.StatusCode[error.code.name], error.message, reason=error.reason,
                       field=error.field, retry_after=error.retry_after)


def to_request(request: generation_pb2.GenerateRequest, fallback_id: str) -> GenerationRequest:
    """Maps a GenerateRequest to the engine's plain request."""
    kind = request.WhichOneof("input")
    sampling = request.sampling
    messages = None
    if kind == "chat":
        messages = tuple(
            ChatTurn(role=ROLE_NAMES.get(m.role, ""), content=m.content)
            for m in request.chat.messages
        )
    return GenerationRequest(
        request_id=request.request_id or fallback_id,
        messages=messages,
        prompt=request.prompt if kind == "prompt" else None,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature if sampling.HasField("temperature") else None,
        top_p=sampling.top_p if sampling.HasField("top_p") else None,
        seed=sampling.seed if sampling.HasField("seed") else None,
        stop=tuple(sampling.stop),
        model=request.model,
    )


def to_response(step: Step, replica_id: str, model: str) -> generation_pb2.GenerateResponse:
    """Maps one engine step to one stream event."""
    if isinstance(step, Started):
        return generation_pb2.GenerateResponse(
            started=generation_pb2.StartedEvent(
                replica_id=replica_id, model=model, prompt_tokens=step.prompt_tokens
            )
        )
    if isinstance(step, Delta):
        return generation_pb2.GenerateResponse(
            delta=inference_pb2.DeltaEvent(text=step.text, token_ids=step.token_ids)
        )
    assert isinstance(step, Finished)
    return generation_pb2.GenerateResponse(
        finished=inference_pb2.FinishedEvent(
            finish_reason=FINISH_REASONS[step.finish_reason],
            usage=inference_pb2.Usage(
                prompt_tokens=step.prompt_tokens, completion_tokens=step.completion_tokens
            ),
            timings=inference_pb2.Timings(
                queued=duration(step.timings.queued),
                time_to_first_token=duration(step.timings.time_to_first_token),
                total=duration(step.timings.total),
            ),
        )
    )


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, engine: Engine, replica_id: str, admission: AdmissionGate,
                 pacer: ChunkPacer) -> None:
        self._engine = engine
        self._replica_id = replica_id
        self._admission = admission
        self._pacer = pacer
        self._started_at = time.monotonic()

    @classmethod
    def for_engine(cls, engine: Engine, replica_id: str,
                   settings: GenerationSettings) -> "GenerationServicer":
        """The servicer with its admission gate and chunk pacer sized from the settings."""
        admission = AdmissionGate(engine.max_running_requests, settings.max_waiting_requests)
        pacer = ChunkPacer(settings.stream_messages_per_second,
                           settings.stream_max_chunk_delay_seconds,
                           open_streams=lambda: admission.admitted)
        return cls(engine, replica_id, admission, pacer)

    async def Generate(self, request, context):
        try:
            check_input(request.WhichOneof("input"), request.chat, request.prompt)
            check_sampling(request.sampling)
            check_fits_context(request.sampling.max_tokens, self._engine.max_context_tokens)
        except InvalidInput as error:
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT, str(error),
                              reason="INVALID_INPUT", field=error.field) from None
        job = to_request(request, current_request_id() or uuid.uuid4().hex)
        pacing = self._pacer.stream(job.max_tokens)
        try:
            with self._admission.admit(self._engine.load().waiting):
                async with aclosing(self._engine.generate(job)) as steps:
                    async for step in steps:
                        sent_at = time.monotonic()
                        yield to_response(step, self._replica_id, self._engine.model_name)
                        if isinstance(step, Delta):
                            # Let the engine's next tokens gather into one delta (chunk_pacing).
                            wait = pacing.wait_after(len(step.token_ids), sent_at)
                            if wait > MIN_PACING_SLEEP:
                                await asyncio.sleep(wait)
        except GenerationError as error:
            log.info("generate_refused", reason=error.reason, detail=error.message)
            raise refusal(error) from None
        except (asyncio.CancelledError, GeneratorExit):
            log.info("generate_cancelled", request_id=job.request_id)
            raise

    async def GetLoad(self, request, context):
        load = self._engine.load()
        return generation_pb2.GetLoadResponse(
            replica_id=self._replica_id,
            model=self._engine.model_name,
            running_requests=load.running,
            waiting_requests=load.waiting,
            kv_cache_usage=load.kv_cache_usage,
            max_context_tokens=self._engine.max_context_tokens,
            uptime=duration(time.monotonic() - self._started_at),
        )

"""The router's request pipeline: checks, then stream stages around the last stage.

A check runs before anything is sent and may refuse the call or decide something about it
(which model). A stream stage wraps the stream of the next one, like middleware: it may add
events of its own (retrieved context, later) or watch and cut the stream coming back (output
moderation). The last stage produces the events: generation through Envoy.
Checks cost nothing per token; each stream stage costs one hop per event, so a stage that
only needs to look at the request belongs among the checks."""
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshllm.api.inference.v1 import inference_pb2
from meshllm.tenancy import Tenancy
from services.router.model_choice import ModelChoice

Events = AsyncIterator[inference_pb2.GenerateResponse]


@dataclass
class GenerationCall:
    """One public Generate call as it moves through the pipeline."""

    request: inference_pb2.GenerateRequest
    request_id: str
    time_remaining: Callable[[], float | None]
    """Seconds left before the caller's deadline, None when it set none."""
    tenancy: Tenancy | None = None
    """Tenant and policy as Envoy asserted them; None when the call bypassed Envoy."""
    arrived: float = field(default_factory=time.perf_counter)
    model: ModelChoice | None = None
    replica: str = ""
    prompt_tokens: int = 0
    """Known once the replica started the generation."""
    cold_start: float | None = None
    """Seconds the call waited for its pool to start a replica; None when one was ready."""


Check = Callable[[GenerationCall], Awaitable[None]]


class Next(Protocol):
    def __call__(self, call: GenerationCall) -> Events: ...


class StreamStage(Protocol):
    def __call__(self, call: GenerationCall, next_stage: Next) -> Events: ...


class Pipeline:
    def __init__(self, checks: Sequence[Check], last: Next,
                 stream_stages: Sequence[StreamStage] = ()):
        self._checks = tuple(checks)
        self._entry = last
        for stage in reversed(stream_stages):
            self._entry = _bind(stage, self._entry)

    async def start(self, call: GenerationCall) -> Events:
        """Runs the checks (raising RequestRejected to refuse), then returns the event stream."""
        for check in self._checks:
            await check(call)
        return self._entry(call)


def _bind(stage: StreamStage, next_stage: Next) -> Next:
    return lambda call: stage(call, next_stage)

"""The router's request pipeline: stages wrap the next one, like middleware.

A stage may refuse the call before anything is sent, add events of its own (retrieved
context, later), or watch and cut the stream coming back (output moderation, later). The
last stage produces the events: today, generation through Envoy."""
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshllm.api.inference.v1 import inference_pb2
from services.router.model_choice import ModelChoice

Events = AsyncIterator[inference_pb2.GenerateResponse]


@dataclass
class GenerationCall:
    """One public Generate call as it moves through the stages."""

    request: inference_pb2.GenerateRequest
    request_id: str
    time_remaining: Callable[[], float | None]
    """Seconds left before the caller's deadline, None when it set none."""
    arrived: float = field(default_factory=time.perf_counter)
    model: ModelChoice | None = None


class Next(Protocol):
    def __call__(self, call: GenerationCall) -> Events: ...


class Stage(Protocol):
    def __call__(self, call: GenerationCall, next_stage: Next) -> Events: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage], last: Next):
        self._entry = last
        for stage in reversed(stages):
            self._entry = _bind(stage, self._entry)

    def run(self, call: GenerationCall) -> Events:
        return self._entry(call)


def _bind(stage: Stage, next_stage: Next) -> Next:
    return lambda call: stage(call, next_stage)

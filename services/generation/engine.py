"""The generation domain: requests, stream steps, validation and the `Engine` protocol.

Plain Python only: no protos, no gRPC. The servicer maps protos to these types and back;
engines (vLLM, sim) implement `Engine` and share the validation and timing code here.
"""
from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, Union


class ErrorCode(enum.Enum):
    """The gRPC status a `GenerationError` becomes; names match `grpc.StatusCode`."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class GenerationError(Exception):
    """A request the engine will not or cannot run, with a message a person can act on,
    a stable `reason` for programs, the request field at fault and when a retry may succeed."""

    def __init__(self, code: ErrorCode, message: str, reason: str = "", field: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or code.name
        self.field = field
        self.retry_after = retry_after


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORTED = "aborted"


@dataclass(frozen=True)
class ChatTurn:
    """One chat message; `role` is "system", "user" or "assistant" ("" when unset)."""

    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Exactly one of `messages` (chat) or `prompt` (raw text) is the input."""

    request_id: str
    messages: tuple[ChatTurn, ...] | None = None
    prompt: str | None = None
    max_tokens: int = 16
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    model: str = ""


@dataclass(frozen=True)
class Started:
    """The engine accepted the request; the prompt is this many tokens after templating."""

    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    """New text and the ids of the tokens that produced it."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Timings:
    """Seconds from the request's arrival at this replica."""

    queued: float
    time_to_first_token: float
    total: float


@dataclass(frozen=True)
class Finished:
    """The last step of a stream."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings


Step = Union[Started, Delta, Finished]


@dataclass(frozen=True)
class EngineLoad:
    """How busy the engine is right now."""

    running: int
    waiting: int
    kv_cache_usage: float


class Engine(Protocol):
    """One model engine. `generate` yields Started, then Deltas, then one Finished.

    Validation errors are raised as `GenerationError` before `Started`. Closing or cancelling
    the iterator aborts the request in the engine.
    """

    @property
    def model_name(self) -> str: ...

    @property
    def max_context_tokens(self) -> int: ...

    @property
    def max_running_requests(self) -> int:
        """How many requests the engine runs at once; the rest wait in its queue."""
        ...

    async def start(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Step]: ...

    def load(self) -> EngineLoad: ...

    async def shutdown(self) -> None: ...


def validate_request(request: GenerationRequest, model_name: str) -> None:
    """What only this replica can judge before templating: its model. The input's own rules
    (messages, roles, sampling ranges, max_tokens against the context) are
    `meshllm.generate_input`'s, checked by the servicer with the same wording the router uses;
    prompt plus completion against the context is `check_context`'s, once the prompt is counted."""
    if request.model and request.model != model_name:
        raise GenerationError(
            ErrorCode.NOT_FOUND,
            f"model {request.model!r} is not served by this replica; it serves {model_name!r} "
            "(leave model empty to accept it)", reason="MODEL_NOT_SERVED", field="model",
        )


def check_context(prompt_tokens: int, max_tokens: int, max_context_tokens: int) -> None:
    """Prompt plus completion must fit the context; raises `GenerationError` with the numbers."""
    if prompt_tokens + max_tokens <= max_context_tokens:
        return
    if prompt_tokens >= max_context_tokens:
        raise GenerationError(
            ErrorCode.INVALID_ARGUMENT,
            f"the prompt is {prompt_tokens} tokens, but this model's context is "
            f"{max_context_tokens} tokens; shorten the prompt", reason="CONTEXT_EXCEEDED",
            field="input",
        )
    raise GenerationError(
        ErrorCode.INVALID_ARGUMENT,
        f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = "
        f"{prompt_tokens + max_tokens} exceeds this model's context of {max_context_tokens} "
        f"tokens; lower max_tokens to at most {max_context_tokens - prompt_tokens} "
        "or shorten the prompt", reason="CONTEXT_EXCEEDED", field="sampling.max_tokens",
    )


@dataclass
class GenerationClock:
    """Times one generation on the monotonic clock, from its arrival at this replica."""

    arrival: float = field(default_factory=time.monotonic)
    scheduled: float | None = None
    first_token: float | None = None

    def mark_scheduled(self, at: float | None = None) -> None:
        if self.scheduled is None:
            self.scheduled = time.monotonic() if at is None else max(at, self.arrival)

    def mark_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()
            self.mark_scheduled(self.first_token)

    def timings(self) -> Timings:
        now = time.monotonic()
        scheduled = self.scheduled if self.scheduled is not None else now
        first = self.first_token if self.first_token is not None else now
        return Timings(
            queued=scheduled - self.arrival,
            time_to_first_token=first - self.arrival,
            total=now - self.arrival,
        )

"""A simulated engine for load tests of the mesh itself: deterministic text, no model.

Time to first token and inter-token latency are asyncio sleeps; validation, accounting
(a real running count, KV usage from tokens in flight) and abort behave like the vLLM engine.
Never the default: select it with MESHLLM_ENGINE=sim.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.generation.engine import (
    Delta,
    EngineLoad,
    Finished,
    FinishReason,
    GenerationClock,
    GenerationRequest,
    Started,
    Step,
    check_context,
    validate_request,
)

WORDS = (
    "the mesh streams tokens from a replica to the router and back to the client while "
    "envoy balances calls over live replicas and the control plane keeps its registry"
).split()
# Tokens a chat template adds per message (role marker and end marker), as in the tiny model.
TEMPLATE_TOKENS_PER_MESSAGE = 3


def count_prompt_tokens(request: GenerationRequest) -> int:
    """Whitespace words stand in for tokens; chat adds a few template tokens per message."""
    if request.messages is not None:
        words = sum(len(turn.content.split()) for turn in request.messages)
        return 1 + words + TEMPLATE_TOKENS_PER_MESSAGE * len(request.messages) + 1
    return len((request.prompt or "").split())


def word_for(position: int, seed: int) -> tuple[str, int]:
    """The text and token id of the generated token at `position` (0-based)."""
    index = (position + seed) % len(WORDS)
    return ("" if position == 0 else " ") + WORDS[index], index


class SimEngine:
    """Implements `Engine` with sleeps instead of a model."""

    def __init__(
        self,
        model_name: str,
        max_context_tokens: int = 2048,
        time_to_first_token: float = 0.05,
        inter_token_latency: float = 0.01,
        kv_cache_tokens: int = 16384,
    ) -> None:
        self._model_name = model_name
        self._max_context_tokens = max_context_tokens
        self._ttft = time_to_first_token
        self._itl = inter_token_latency
        self._kv_cache_tokens = kv_cache_tokens
        self._open_streams: dict[str, int] = {}  # by request id; ids need not be unique
        self._running = 0
        self._tokens_in_use = 0
        self._aborted: set[str] = set()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def max_context_tokens(self) -> int:
        return self._max_context_tokens

    async def start(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Step]:
        clock = GenerationClock()
        validate_request(request, self._model_name, self._max_context_tokens)
        prompt_tokens = count_prompt_tokens(request)
        check_context(prompt_tokens, request.max_tokens, self._max_context_tokens)
        yield Started(prompt_tokens=prompt_tokens)

        request_id = request.request_id
        self._open_streams[request_id] = self._open_streams.get(request_id, 0) + 1
        self._running += 1
        self._tokens_in_use += prompt_tokens
        clock.mark_scheduled()
        reason = FinishReason.LENGTH
        completion = 0
        try:
            for position in range(request.max_tokens):
                await asyncio.sleep(self._ttft if position == 0 else self._itl)
                if request_id in self._aborted:
                    reason = FinishReason.ABORTED
                    break
                text, token_id = word_for(position, request.seed or 0)
                clock.mark_token()
                completion += 1
                self._tokens_in_use += 1
                yield Delta(text=text, token_ids=(token_id,))
            yield Finished(reason, prompt_tokens, completion, clock.timings())
        finally:
            # Runs on normal end, on cancellation and on aclose(): the slot is always freed.
            self._running -= 1
            self._tokens_in_use -= prompt_tokens + completion
            self._open_streams[request_id] -= 1
            if not self._open_streams[request_id]:
                del self._open_streams[request_id]
                self._aborted.discard(request_id)

    async def abort(self, request_id: str) -> None:
        if request_id in self._open_streams:
            self._aborted.add(request_id)

    def load(self) -> EngineLoad:
        return EngineLoad(
            running=self._running,
            waiting=0,
            kv_cache_usage=min(1.0, self._tokens_in_use / self._kv_cache_tokens),
        )

    async def shutdown(self) -> None:
        self._aborted.update(self._open_streams)

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
        self._live_tokens: dict[str, int] = {}
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

        key = f"{request.request_id}#{id(clock)}"  # request ids need not be unique
        self._live_tokens[key] = prompt_tokens
        clock.mark_scheduled()
        reason = FinishReason.LENGTH
        completion = 0
        try:
            for position in range(request.max_tokens):
                await asyncio.sleep(self._ttft if position == 0 else self._itl)
                if request.request_id in self._aborted:
                    reason = FinishReason.ABORTED
                    break
                text, token_id = word_for(position, request.seed or 0)
                clock.mark_token()
                completion += 1
                self._live_tokens[key] += 1
                yield Delta(text=text, token_ids=(token_id,))
            yield Finished(reason, prompt_tokens, completion, clock.timings())
        finally:
            # Runs on normal end, on cancellation and on aclose(): the slot is always freed.
            del self._live_tokens[key]
            if not any(k.startswith(f"{request.request_id}#") for k in self._live_tokens):
                self._aborted.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        if any(key.startswith(f"{request_id}#") for key in self._live_tokens):
            self._aborted.add(request_id)

    def load(self) -> EngineLoad:
        used = sum(self._live_tokens.values())
        return EngineLoad(
            running=len(self._live_tokens),
            waiting=0,
            kv_cache_usage=min(1.0, used / self._kv_cache_tokens),
        )

    async def shutdown(self) -> None:
        for key in list(self._live_tokens):
            self._aborted.add(key.split("#", 1)[0])

"""A simulated engine for load tests of the mesh itself: deterministic text, no model.

Time to first token and inter-token latency are asyncio sleeps; validation, accounting
(a real running count, KV usage from tokens in flight) and abort behave like the vLLM engine.
The text is a fixed sentence repeated, a text of the operator's (the words of a moderation
benchmark), or the prompt itself (echo: what the engine was sent, for tests), one word or
punctuation mark per token.
Never the default: select it with MESHLLM_ENGINE=sim.
"""
from __future__ import annotations

import asyncio
import re
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
# How many the sim runs at once unless told (MESHLLM_GENERATION_MAX_RUNNING_REQUESTS); the
# rest wait, as in vLLM's queue.
DEFAULT_MAX_RUNNING_REQUESTS = 256
# Tokens a chat template adds per message (role marker and end marker), as in the tiny model.
TEMPLATE_TOKENS_PER_MESSAGE = 3


def count_prompt_tokens(request: GenerationRequest) -> int:
    """Whitespace words stand in for tokens; chat adds a few template tokens per message."""
    if request.messages is not None:
        words = sum(len(turn.content.split()) for turn in request.messages)
        return 1 + words + TEMPLATE_TOKENS_PER_MESSAGE * len(request.messages) + 1
    return len((request.prompt or "").split())


_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")
"""A sim token: a word or one punctuation mark, with the whitespace before it."""


def sim_tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(text))


DEFAULT_TOKENS = sim_tokens(" ".join(WORDS))


def word_for(position: int, seed: int,
             tokens: tuple[str, ...] = DEFAULT_TOKENS) -> tuple[str, int]:
    """The text and token id of the generated token at `position` (0-based), from `tokens`
    repeated."""
    index = (position + seed) % len(tokens)
    text = tokens[index]
    if position == 0:
        return text.lstrip(), index
    if index == 0 and not text[:1].isspace():
        return " " + text, index  # the text starts over: a new word, not a run-on
    return text, index


def prompt_text(request: GenerationRequest) -> str:
    if request.messages is not None:
        return " ".join(turn.content for turn in request.messages)
    return request.prompt or ""


class SimEngine:
    """Implements `Engine` with sleeps instead of a model.

    Tokens fall due on a fixed timeline from the request's start, whether or not the caller
    is reading, and a caller that comes back late gets every token due meanwhile in one Delta,
    as vLLM merges a request's outputs for a slow consumer. At most `max_running_requests`
    run at once; the rest wait, as in vLLM's queue."""

    def __init__(
        self,
        model_name: str,
        max_context_tokens: int = 2048,
        time_to_first_token: float = 0.05,
        inter_token_latency: float = 0.01,
        kv_cache_tokens: int = 16384,
        max_running_requests: int = DEFAULT_MAX_RUNNING_REQUESTS,
        load_seconds: float = 0.0,
        text: str = "",
        echo_prompt: bool = False,
    ) -> None:
        self._model_name = model_name
        self._load_seconds = load_seconds
        self._max_context_tokens = max_context_tokens
        self._ttft = time_to_first_token
        self._itl = inter_token_latency
        self._kv_cache_tokens = kv_cache_tokens
        self._max_running = max_running_requests
        self._slots = asyncio.Semaphore(max_running_requests)
        self._running = 0
        self._waiting = 0
        self._tokens_in_use = 0
        self._stopping = False
        self._tokens = sim_tokens(text) or DEFAULT_TOKENS
        self._echo_prompt = echo_prompt

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def max_context_tokens(self) -> int:
        return self._max_context_tokens

    @property
    def max_running_requests(self) -> int:
        return self._max_running

    async def start(self) -> None:
        # What loading weights costs a real engine, so that cold starts can be measured.
        await asyncio.sleep(self._load_seconds)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Step]:
        clock = GenerationClock()
        validate_request(request, self._model_name)
        prompt_tokens = count_prompt_tokens(request)
        check_context(prompt_tokens, request.max_tokens, self._max_context_tokens)
        yield Started(prompt_tokens=prompt_tokens)

        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        self._tokens_in_use += prompt_tokens
        clock.mark_scheduled()
        tokens = (sim_tokens(prompt_text(request)) if self._echo_prompt else ()) or self._tokens
        loop = asyncio.get_running_loop()
        first_due = loop.time() + self._ttft
        reason, completion = FinishReason.LENGTH, 0
        try:
            while completion < request.max_tokens:
                wait = first_due + completion * self._itl - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._stopping:
                    reason = FinishReason.ABORTED
                    break
                due = request.max_tokens if self._itl <= 0 else min(
                    request.max_tokens, 1 + int((loop.time() - first_due) / self._itl))
                words = [word_for(position, request.seed or 0, tokens)
                         for position in range(completion, max(due, completion + 1))]
                clock.mark_token()
                completion += len(words)
                self._tokens_in_use += len(words)
                yield Delta(text="".join(text for text, _ in words),
                            token_ids=tuple(token_id for _, token_id in words))
            yield Finished(reason, prompt_tokens, completion, clock.timings())
        finally:
            # Runs on normal end, on cancellation and on aclose(): the slot is always freed.
            self._slots.release()
            self._running -= 1
            self._tokens_in_use -= prompt_tokens + completion

    def load(self) -> EngineLoad:
        return EngineLoad(
            running=self._running,
            waiting=self._waiting,
            kv_cache_usage=min(1.0, self._tokens_in_use / self._kv_cache_tokens),
        )

    async def shutdown(self) -> None:
        self._stopping = True

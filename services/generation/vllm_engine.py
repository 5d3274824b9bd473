"""The real engine: one vLLM `AsyncLLM` per replica.

AsyncLLM runs its engine core (and a worker under it) in child processes. A clean shutdown
stops them; if this process is killed outright, `ChildReaper`'s watchdog stops them. They also
stay in this process's group (vLLM calls no setsid), so a supervisor can kill the group.

Load: vLLM v1 pushes `SchedulerStats` (running, waiting, KV cache usage) from the engine core
with its outputs after every engine step. We pass a stat logger (`SchedulerStatsRecorder`) to
`AsyncLLM.from_engine_args(stat_loggers=...)`, which keeps the last snapshot; default stat
loggers stay off (`disable_log_stats=True`), vLLM's Prometheus logger is always added by vLLM.
The snapshot is only refreshed on engine steps, so `load()` counts requests with the frontend's
own number of unfinished requests (it drops the moment a request is aborted) and takes only the
waiting/running split and KV usage from the snapshot.
"""
from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from services.generation.child_reaper import ChildReaper
from services.generation.engine import (
    Delta,
    EngineLoad,
    ErrorCode,
    Finished,
    FinishReason,
    GenerationClock,
    GenerationError,
    GenerationRequest,
    Started,
    Step,
    check_context,
    validate_request,
)

GIB = 1024**3
FINISH_REASONS = {"length": FinishReason.LENGTH, "stop": FinishReason.STOP}


# Below this many characters of input, tokenizing takes well under a millisecond.
INLINE_TOKENIZE_CHARS = 4096


def input_chars(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(len(turn.content) for turn in request.messages)
    return len(request.prompt or "")


def apply_chat_template(tokenizer, messages) -> str:
    """The model's own chat template over the conversation. A template that refuses it (roles
    that do not alternate, a system role the model has no place for) raises through jinja's
    `raise_exception`: that is the caller's conversation, INVALID_ARGUMENT with its reason."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            [{"role": turn.role, "content": turn.content} for turn in messages],
            tokenize=False, add_generation_prompt=True)
    except TemplateError as error:
        raise GenerationError(
            ErrorCode.INVALID_ARGUMENT,
            f"the model's chat template refused the conversation: {error}",
            reason="CHAT_TEMPLATE_REJECTED", field="chat.messages") from None


class SchedulerStatsRecorder:
    """A vLLM stat logger that keeps the latest scheduler stats of each engine.

    vLLM builds one per engine from the factory `SchedulerStatsRecorder.factory(snapshots)`.
    """

    def __init__(self, snapshots: dict[int, EngineLoad], engine_index: int) -> None:
        self._snapshots = snapshots
        self._engine_index = engine_index

    @classmethod
    def factory(cls, snapshots: dict[int, EngineLoad]):
        def make(vllm_config, engine_index: int = 0) -> "SchedulerStatsRecorder":
            return cls(snapshots, engine_index)

        return make

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        if scheduler_stats is not None:
            self._snapshots[engine_idx] = EngineLoad(
                running=scheduler_stats.num_running_reqs,
                waiting=scheduler_stats.num_waiting_reqs,
                kv_cache_usage=float(scheduler_stats.kv_cache_usage),
            )

    def log_engine_initialized(self) -> None:
        return None

    def log(self) -> None:
        return None

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        return None


def import_vllm():
    """vLLM's engine API. Imported on use, not with this module, so the sim engine never
    pays for it; a warm process (warm_start.py) calls this ahead of its assignment."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncEngineArgs, AsyncLLM


class VllmEngine:
    """Implements `Engine` on vLLM's AsyncLLM."""

    def __init__(
        self,
        model: str,
        served_model_name: str | None = None,
        max_model_len: int | None = None,
        kv_cache_gib: float = 1.0,
        enforce_eager: bool = True,
        max_num_seqs: int | None = None,
        stream_interval: int = 1,
    ) -> None:
        self._model = model
        self._served_model_name = served_model_name or model
        self._max_model_len = max_model_len
        self._kv_cache_gib = kv_cache_gib
        self._enforce_eager = enforce_eager
        self._max_num_seqs = max_num_seqs
        self._stream_interval = stream_interval
        self._llm = None
        self._tokenizer = None
        self._snapshots: dict[int, EngineLoad] = {}
        self._reaper = ChildReaper()
        self._stream_numbers = itertools.count(1)

    @property
    def model_name(self) -> str:
        return self._served_model_name

    @property
    def max_context_tokens(self) -> int:
        return int(self._llm.model_config.max_model_len)

    @property
    def max_running_requests(self) -> int:
        return int(self._llm.vllm_config.scheduler_config.max_num_seqs)

    async def start(self) -> None:
        """Starts the engine core process and loads the model (blocks until it is ready)."""
        AsyncEngineArgs, AsyncLLM = import_vllm()
        args = AsyncEngineArgs(
            model=self._model,
            served_model_name=[self._served_model_name],
            max_model_len=self._max_model_len,
            kv_cache_memory_bytes=int(self._kv_cache_gib * GIB),
            enforce_eager=self._enforce_eager,
            disable_log_stats=True,
            max_num_seqs=self._max_num_seqs,
            stream_interval=self._stream_interval,
        )
        recorder = SchedulerStatsRecorder.factory(self._snapshots)
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[recorder])
        self._tokenizer = self._llm.get_tokenizer()
        self._reaper.watch_children()

    async def _tokenize(self, request: GenerationRequest) -> list[int]:
        """Templating and tokenizing a long prompt takes milliseconds: off the event loop, so
        the streams of other requests keep flowing meanwhile. A short one takes less than
        the hop to a thread costs on a busy host (the thread waits for the GIL), so inline."""
        if input_chars(request) < INLINE_TOKENIZE_CHARS:
            return self._prompt_token_ids(request)
        return await asyncio.to_thread(self._prompt_token_ids, request)

    def _prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            text = apply_chat_template(self._tokenizer, request.messages)
            # The template already holds the special tokens (e.g. BOS).
            return list(self._tokenizer.encode(text, add_special_tokens=False))
        return list(self._tokenizer.encode(request.prompt))

    def _sampling_params(self, request: GenerationRequest):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            stop=list(request.stop) or None,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Step]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        clock = GenerationClock()
        validate_request(request, self.model_name)
        prompt_ids = await self._tokenize(request)
        check_context(len(prompt_ids), request.max_tokens, self.max_context_tokens)
        try:
            params = self._sampling_params(request)
        except (ValueError, VLLMClientError) as error:
            raise GenerationError(ErrorCode.INVALID_ARGUMENT, str(error)) from error
        # Callers' request ids need not be unique (a retry may reuse one); vLLM aborts by id,
        # so each stream gets its own engine id and cancelling one never aborts another.
        engine_id = f"{request.request_id}-{next(self._stream_numbers)}"
        # The request is queued in the engine before `Started` is written: the first token
        # must not wait for that write (it waits for the caller's side of the stream).
        try:
            outputs = await self._llm.add_request(
                engine_id, {"prompt_token_ids": prompt_ids}, params)
        except asyncio.CancelledError:
            await self._llm.abort(engine_id)
            raise
        except VLLMClientError as error:
            raise GenerationError(ErrorCode.INVALID_ARGUMENT, str(error)) from error
        reason, completion = FinishReason.ABORTED, 0
        try:
            yield Started(prompt_tokens=len(prompt_ids))
            finished = False
            while not finished:
                # Everything the engine produced since the last pull, merged into one output.
                output = outputs.get_nowait() or await outputs.get()
                finished = output.finished
                if output.metrics is not None and output.metrics.scheduled_ts:
                    # Engine-core timestamps are on the same host-wide monotonic clock.
                    clock.mark_scheduled(output.metrics.scheduled_ts)
                choice = output.outputs[0]
                if choice.token_ids:
                    clock.mark_token()
                    completion += len(choice.token_ids)
                    yield Delta(text=choice.text, token_ids=tuple(choice.token_ids))
                if finished:
                    reason = FINISH_REASONS.get(choice.finish_reason, FinishReason.ABORTED)
        except (asyncio.CancelledError, GeneratorExit):
            # The caller went away: no tokens for nobody.
            await self._llm.abort(outputs.request_id, internal=True)
            raise
        except VLLMClientError as error:
            raise GenerationError(ErrorCode.INVALID_ARGUMENT, str(error)) from error
        except EngineDeadError as error:
            raise GenerationError(
                ErrorCode.UNAVAILABLE, "the engine of this replica died; retry on another"
            ) from error
        finally:
            outputs.close()
        yield Finished(reason, len(prompt_ids), completion, clock.timings())

    def load(self) -> EngineLoad:
        """Running and waiting from the frontend's own count of unfinished requests, split by
        the engine's last scheduler stats: those stats arrive only with engine steps, so alone
        they lag a just-started or just-aborted request."""
        if self._llm is None:
            return EngineLoad(running=0, waiting=0, kv_cache_usage=0.0)
        unfinished = self._llm.get_num_unfinished_requests()
        waiting = min(sum(s.waiting for s in self._snapshots.values()), unfinished)
        kv_cache_usage = max((s.kv_cache_usage for s in self._snapshots.values()), default=0.0)
        return EngineLoad(running=unfinished - waiting, waiting=waiting,
                          kv_cache_usage=kv_cache_usage if unfinished else 0.0)

    async def shutdown(self) -> None:
        """Stops the engine core and its worker; safe to call twice."""
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        await asyncio.to_thread(self._reaper.stop)  # waits for the watchdog to exit

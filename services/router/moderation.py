"""Moderation in the router: the input judged before anything else happens to the call, the
output judged window by window before it leaves.

Input: one ModerateText over the prompt (or each chat message). Redactions rewrite the request
before it goes on; a block ends the call with a moderation event and a content-filter finish,
before any replica, reservation or cold start is involved.

Output: the deltas' text is held back and sent to ModerateStream as a window once it has
`window_tokens` tokens or ends a sentence (the first window at once: the first text waits for
one verdict, not for a window). Moderation says what may be released; the router sends that
as a delta (text only: token ids would spell out what was redacted). A block ends the stream
with a moderation event and a content-filter finish, and closing the generation stream aborts
the engine's request. While a verdict is awaited, generation's deltas gather (and merge)
behind it, so windows grow with the wait instead of queueing.

Every verdict other than allow reaches the client as a moderation event. Moderation that
cannot answer fails the call closed (UNAVAILABLE), or open when the tenant's policy says so,
with an event saying the text went unchecked."""
import re
import time
from contextlib import aclosing

import grpc
from prometheus_client import Counter

from meshllm.api.inference.v1 import inference_pb2 as inference
from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.logging import get_logger
from meshllm.moderation_policy import fails_open, window_tokens, word_for
from meshllm.protos import duration
from meshllm.tenancy import cost_micro_usd
from services.router.errors import RequestRejected
from services.router.moderation_client import ModerationClient, ModerationUnavailable
from services.router.pipeline import Events, GenerationCall, Next

log = get_logger(__name__)
UNAVAILABLE = Counter(
    "meshllm_router_moderation_unavailable",
    "Calls whose moderation could not answer, by stage and what the tenant's policy did "
    "(closed: the call failed; open: it went on unchecked)", ["stage", "fail_mode"])
_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD_END = re.compile(r"\s")
_ACTION_WORDS = {m.ACTION_FLAG: "flagged", m.ACTION_REDACT: "redacted",
                 m.ACTION_BLOCK: "blocked"}


def moderation_event(stage: int, verdict: m.Verdict) -> inference.GenerateResponse:
    category = word_for(m.Category, verdict.category).replace("_", " ")
    message = (f"{category} {_ACTION_WORDS.get(verdict.action, 'found')} "
               f"in the {word_for(m.Stage, stage)} ({verdict.detector})")
    return inference.GenerateResponse(moderation=inference.ModerationEvent(
        stage=stage, category=verdict.category, action=verdict.action,
        detector=verdict.detector, score=verdict.score, message=message))


def failed_open(call: GenerationCall, stage: int,
                error: ModerationUnavailable) -> inference.GenerateResponse:
    """The event saying the text goes on unchecked, when the tenant's policy fails open;
    otherwise the call fails (raises RequestRejected). Counted and logged either way."""
    fail_open = fails_open(call.tenancy.policy)
    UNAVAILABLE.labels(word_for(m.Stage, stage), "open" if fail_open else "closed").inc()
    log.warning("moderation_unavailable", stage=word_for(m.Stage, stage), detail=str(error))
    if not fail_open:
        raise unavailable(call, str(error)) from None
    return inference.GenerateResponse(moderation=inference.ModerationEvent(
        stage=stage, detector="moderation-unavailable", unchecked=True,
        message=f"moderation could not judge the {word_for(m.Stage, stage)} ({error}); the "
                f"{word_for(m.Stage, stage)} went on unchecked: the tenant's policy fails open"))


def unavailable(call: GenerationCall, reason: str) -> RequestRejected:
    return RequestRejected(
        grpc.StatusCode.UNAVAILABLE,
        f"moderation could not be reached or was too slow ({reason}); tenant "
        f"{call.tenancy.tenant!r}'s policy fails closed, so the call was not served; retry "
        "shortly", reason="MODERATION_UNAVAILABLE", retry_after=1.0)


def input_texts(request: inference.GenerateRequest) -> list[str]:
    if request.WhichOneof("input") == "chat":
        return [message.content for message in request.chat.messages]
    return [request.prompt]


def replace_input(request: inference.GenerateRequest, texts: list[str]) -> None:
    if request.WhichOneof("input") == "chat":
        for message, text in zip(request.chat.messages, texts):
            message.content = text
    else:
        request.prompt = texts[0]


class Moderation:
    """The stream stage; see the module's docstring."""

    def __init__(self, client: ModerationClient):
        self._client = client

    async def __call__(self, call: GenerationCall, next_stage: Next) -> Events:
        policy = call.tenancy.policy
        input_events: list[inference.GenerateResponse] = []
        if not policy.moderation.input_disabled:
            verdicts = await self._moderate_input(call, input_events)
            if verdicts is not None and verdicts.action == m.ACTION_BLOCK:
                for event in input_events:
                    yield event
                yield self._content_filtered(call, 0)
                return
        if policy.moderation.output_disabled:
            events = next_stage(call)
            if input_events:  # else no second generator step per event
                events = self._with_input_events(events, input_events)
            async with aclosing(events):
                async for event in events:
                    yield event
            return
        # Closed with the stage, however it ends: its cleanup aborts the generation.
        async with aclosing(self._moderated_output(call, next_stage, input_events)) as events:
            async for event in events:
                yield event

    async def _moderate_input(self, call: GenerationCall,
                              events: list) -> m.ModerateTextResponse | None:
        texts = input_texts(call.request)
        try:
            verdicts = await self._client.moderate_input(call, texts)
        except ModerationUnavailable as error:
            events.append(failed_open(call, m.STAGE_INPUT, error))
            return None
        for text in verdicts.texts:
            events.extend(moderation_event(m.STAGE_INPUT, v) for v in text.verdicts)
        if verdicts.action == m.ACTION_REDACT:
            replace_input(call.request, [text.text for text in verdicts.texts])
        return verdicts

    @staticmethod
    async def _with_input_events(events: Events, input_events: list) -> Events:
        """`events`, with the input's moderation events right after the started event."""
        async with aclosing(events):
            async for event in events:
                yield event
                if input_events and type(event) is not bytes and event.HasField("started"):
                    for input_event in input_events:
                        yield input_event
                    input_events.clear()

    async def _moderated_output(self, call: GenerationCall, next_stage: Next,
                                input_events: list) -> Events:
        output = self._client.output(call)
        window = window_tokens(call.tenancy.policy)
        held: list[str] = []
        held_tokens = completion = 0
        released_any, checking = False, True
        try:
            async with aclosing(self._with_input_events(next_stage(call), input_events)) \
                    as events:
                async for event in events:
                    if type(event) is not bytes:
                        if event.HasField("finished") and checking:
                            try:
                                verdict = await self._judge(call, output, "".join(held), True)
                            except _FailedOpen as failed:
                                for out in failed.events:
                                    yield out
                                yield event
                                continue
                            for out in self._released(verdict):
                                yield out
                            if verdict.action == m.ACTION_BLOCK:
                                yield self._content_filtered(call, completion)
                                return
                        yield event
                        continue
                    delta = inference.GenerateResponse.FromString(event).delta
                    completion += len(delta.token_ids)
                    if not checking:
                        yield event
                        continue
                    held.append(delta.text)
                    held_tokens += len(delta.token_ids)
                    if not self._window_ends(delta.text, held_tokens, window, released_any):
                        continue
                    try:
                        verdict = await self._judge(call, output, "".join(held), False)
                    except _FailedOpen as failed:
                        checking = False
                        for out in failed.events:
                            yield out
                        continue
                    held.clear()
                    held_tokens = 0
                    released_any = released_any or bool(verdict.release)
                    for out in self._released(verdict):
                        yield out
                    if verdict.action == m.ACTION_BLOCK:
                        yield self._content_filtered(call, completion)
                        return
        finally:
            output.close()

    @staticmethod
    def _window_ends(text: str, held_tokens: int, window: int, released_any: bool) -> bool:
        """Whether the text held now goes to moderation: a full window or a sentence's end;
        before anything was released, any word boundary (moderation releases nothing before
        one, so the first word goes out as soon as it is complete)."""
        if held_tokens >= window or _SENTENCE_END.search(text):
            return True
        return not released_any and _WORD_END.search(text) is not None

    async def _judge(self, call: GenerationCall, output, text: str,
                     end: bool) -> m.ModerateStreamResponse:
        try:
            return await output.judge(text, end)
        except ModerationUnavailable as error:
            raise _FailedOpen(failed_open(call, m.STAGE_OUTPUT, error),
                              error.unreleased) from None

    @staticmethod
    def _released(verdict: m.ModerateStreamResponse) -> Events:
        events = [moderation_event(m.STAGE_OUTPUT, v) for v in verdict.verdicts]
        if verdict.release:
            events.append(_delta(verdict.release))
        return events

    @staticmethod
    def _content_filtered(call: GenerationCall, completion: int) -> inference.GenerateResponse:
        total = time.perf_counter() - call.arrived
        model = call.model.pool.name if call.model else ""
        return inference.GenerateResponse(finished=inference.FinishedEvent(
            finish_reason=inference.FINISH_REASON_CONTENT_FILTER,
            usage=inference.Usage(prompt_tokens=call.prompt_tokens,
                                  completion_tokens=completion),
            timings=inference.Timings(total=duration(total)),
            cost_micro_usd=cost_micro_usd(call.tenancy.policy, model, call.prompt_tokens,
                                          completion)))


class _FailedOpen(Exception):
    """Moderation failed mid-stream under a policy that fails open: the events that say so
    and hand over the text moderation had not released, after which output goes unchecked."""

    def __init__(self, event: inference.GenerateResponse, unreleased: str):
        self.events = [event, _delta(unreleased)] if unreleased else [event]


def _delta(text: str) -> inference.GenerateResponse:
    return inference.GenerateResponse(delta=inference.DeltaEvent(text=text))

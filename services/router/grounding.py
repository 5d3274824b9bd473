"""Grounded generation: for a request that names a retrieval collection, the passages found
for its question go into the prompt, numbered, within the context the model has room for, and
a context event citing them goes to the client after the started event, before any text.

Only requests with retrieval options pass through this stage; for the rest it adds nothing to
the stream, not even a generator hop. Retrieval that fails fails the call (UNAVAILABLE), or,
when the request allows it, the call goes on without context and the event says why."""
from contextlib import aclosing

import grpc
from prometheus_client import Counter

from meshllm.api.inference.v1 import inference_pb2 as inference
from meshllm.api.retrieval.v1 import retrieval_pb2 as r
from meshllm.collection_access import may_use_collection
from meshllm.logging import get_logger
from services.router.errors import RequestRejected
from services.router.grounded_prompt import (UNKNOWN_CONTEXT_BUDGET, estimated_tokens,
                                             place_passages, question_of)
from services.router.pipeline import Events, GenerationCall, Next
from services.router.retrieval_client import RetrievalClient, RetrievalUnavailable

log = get_logger(__name__)
GROUNDED_CALLS = Counter(
    "meshllm_router_grounded_calls", "Calls that named a retrieval collection, by outcome "
    "(grounded; nothing_found; without_context: retrieval failed and the request allowed it; "
    "failed: retrieval failed and so did the call)", ["outcome"])
DEFAULT_TOP_K = 4
MAX_TOP_K = 20


class Grounding:
    def __init__(self, client: RetrievalClient):
        self._client = client

    def __call__(self, call: GenerationCall, next_stage: Next) -> Events:
        if not call.request.HasField("retrieval"):
            return next_stage(call)
        return self._grounded(call, next_stage)

    async def _grounded(self, call: GenerationCall, next_stage: Next) -> Events:
        context = await self._context(call)
        async with aclosing(next_stage(call)) as events:
            async for event in events:
                yield event
                if context is not None and type(event) is not bytes \
                        and event.HasField("started"):
                    yield context
                    context = None

    async def _context(self, call: GenerationCall) -> inference.GenerateResponse:
        options = call.request.retrieval
        top_k = check_options(call, options)
        question = options.query or question_of(call.request)
        try:
            passages = await self._client.search(call, r.SearchRequest(
                collection=options.collection, query=question, top_k=top_k,
                filters=options.filters))
        except RetrievalUnavailable as error:
            log.warning("retrieval_unavailable", collection=options.collection, detail=str(error))
            GROUNDED_CALLS.labels(
                "without_context" if options.allow_without_context else "failed").inc()
            if not options.allow_without_context:
                raise RequestRejected(
                    grpc.StatusCode.UNAVAILABLE,
                    f"retrieval could not search collection {options.collection!r} ({error}); "
                    "retry shortly, or set retrieval.allow_without_context to generate without "
                    "it", reason="RETRIEVAL_UNAVAILABLE", retry_after=1.0) from None
            return inference.GenerateResponse(context=inference.ContextEvent(
                collection=options.collection, unavailable=True,
                message=f"retrieval failed ({error}); generated without context, as the "
                        "request allows"))
        placed = place_passages(call.request, passages, context_budget(call))
        GROUNDED_CALLS.labels("grounded" if placed else "nothing_found").inc()
        message = (f"{len(placed)} passages from {options.collection!r}" if placed else
                   f"nothing in {options.collection!r} matched the question")
        if len(placed) < len(passages):
            message += f"; {len(passages) - len(placed)} left out: the context had no room"
        return inference.GenerateResponse(context=inference.ContextEvent(
            collection=options.collection, message=message,
            omitted_passages=len(passages) - len(placed),
            citations=[inference.Citation(number=n, passage=p)
                       for n, p in enumerate(placed, 1)]))


def check_options(call: GenerationCall, options: inference.RetrievalOptions) -> int:
    """The passages to ask for; refuses options that can never work."""
    if not options.collection:
        raise RequestRejected(grpc.StatusCode.INVALID_ARGUMENT,
                              "retrieval.collection is empty; name the collection to search",
                              reason="INVALID_INPUT", field="retrieval.collection")
    if not may_use_collection(call.tenancy.policy, options.collection):
        raise RequestRejected(
            grpc.StatusCode.PERMISSION_DENIED,
            f"tenant {call.tenancy.tenant!r}'s policy does not allow collection "
            f"{options.collection!r} (policy.allowed_collections)",
            reason="COLLECTION_NOT_ALLOWED", field="retrieval.collection")
    if not 0 <= options.top_k <= MAX_TOP_K:
        raise RequestRejected(grpc.StatusCode.INVALID_ARGUMENT,
                              f"retrieval.top_k must be 1 to {MAX_TOP_K} (0 for "
                              f"{DEFAULT_TOP_K}); got {options.top_k}",
                              reason="INVALID_INPUT", field="retrieval.top_k")
    if options.max_context_tokens < 0:
        raise RequestRejected(grpc.StatusCode.INVALID_ARGUMENT,
                              "retrieval.max_context_tokens must be 0 (the model's context) "
                              "or more", reason="INVALID_INPUT",
                              field="retrieval.max_context_tokens")
    return options.top_k or DEFAULT_TOP_K


def context_budget(call: GenerationCall) -> int:
    """Tokens the passages may take: what the model's context leaves after the request's
    own prompt and completion, at most what the request allows."""
    asked = call.request.retrieval.max_context_tokens
    context = call.model.pool.max_context_tokens if call.model else 0
    if not context:  # the replicas did not say: only what the request allows, or a little
        return asked or UNKNOWN_CONTEXT_BUDGET
    room = context - call.request.sampling.max_tokens - estimated_tokens(call.request)
    return max(0, min(room, asked) if asked else room)

"""Paying for each call: the stream stage that reserves before generation, puts the cost on the
finished event, and settles with the auth service when the stream ends, however it ends.

The tenant and its policy come from Envoy's headers (meshllm.tenancy). Reserve is called only
when the policy has something to hold (a budget, a tokens-per-minute or concurrency limit), so
an unmetered tenant's first token waits for no extra call. Settling runs after the stream,
off the client's path, batched, and is retried while auth is away: it is idempotent on the
ledger id."""
import asyncio
import secrets
import time

import grpc

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.inference.v1 import inference_pb2
from meshllm.errors import CallRefused
from meshllm.logging import get_logger
from meshllm.protos import duration
from meshllm.tasks import cancel_and_wait
from meshllm.tenancy import cost_micro_usd
from services.router.delta_tokens import delta_token_count
from services.router.errors import PassedOn, RequestRejected
from services.router.pipeline import Events, GenerationCall, Next

log = get_logger(__name__)
RESERVE_METHOD = "/meshllm.auth.v1.UsageService/Reserve"
SETTLE_BATCH_METHOD = "/meshllm.auth.v1.UsageService/SettleBatch"
_PROMPT_TOKEN_SLACK = 64  # chat-template tokens around the messages, at most


def prompt_token_bound(request: inference_pb2.GenerateRequest) -> int:
    """An upper bound of the prompt's tokens before it is tokenized: no tokenizer the mesh
    serves makes more tokens than UTF-8 bytes, plus what a chat template adds."""
    if request.WhichOneof("input") == "chat":
        size = sum(len(m.content.encode()) + 8 for m in request.chat.messages)
    else:
        size = len(request.prompt.encode())
    return size + _PROMPT_TOKEN_SLACK


def needs_reservation(policy: auth_pb2.Policy) -> bool:
    return bool(policy.HasField("monthly_budget_micro_usd") or policy.label_limits
                or policy.tokens_per_minute or policy.max_concurrent_streams)


class Settlements:
    """Settles calls in the background, in batches: the calls that end within `flush_seconds`
    of one another go in one SettleBatch (one call for the router, one commit for auth's
    store), retried while auth cannot be reached. `drain` sends what is left when the router
    stops."""

    def __init__(self, channel: grpc.aio.Channel, flush_seconds: float = 0.05,
                 max_batch: int = 256, max_waiting: int = 100_000, attempts: int = 10):
        self._settle = channel.unary_unary(
            SETTLE_BATCH_METHOD,
            request_serializer=auth_pb2.SettleBatchRequest.SerializeToString,
            response_deserializer=auth_pb2.SettleBatchResponse.FromString)
        self._flush_seconds = flush_seconds
        self._max_batch = max_batch
        self._max_waiting = max_waiting
        self._attempts = attempts
        self._waiting: list[auth_pb2.SettleRequest] = []
        self._arrived = asyncio.Event()
        self._sending = False
        self._flusher: asyncio.Task | None = None

    def submit(self, request: auth_pb2.SettleRequest) -> None:
        if len(self._waiting) >= self._max_waiting:
            lost = self._waiting.pop(0)
            log.error("settle_lost", request_id=lost.request_id, tenant=lost.tenant_id,
                      reason="too many settlements waiting for auth")
        self._waiting.append(request)
        self._arrived.set()
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await self._arrived.wait()
            await asyncio.sleep(self._flush_seconds)  # the calls ending now join the batch
            batch = self._waiting[:self._max_batch]
            del self._waiting[:self._max_batch]
            if not self._waiting:
                self._arrived.clear()
            self._sending = True
            try:
                await self._send(batch)
            finally:
                self._sending = False

    async def _send(self, batch: list[auth_pb2.SettleRequest]) -> None:
        request = auth_pb2.SettleBatchRequest(calls=batch)
        for attempt in range(self._attempts):
            try:
                reply = await self._settle(request, timeout=5.0)
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.error("settle_refused", calls=len(batch), code=error.code().name,
                              detail=error.details())
                    return
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))
                continue
            for result in reply.results:
                if result.error:
                    log.error("settle_refused", request_id=result.request_id,
                              detail=result.error)
            return
        log.error("settle_lost", calls=len(batch), attempts=self._attempts,
                  request_ids=[call.request_id for call in batch[:10]])

    async def drain(self, timeout: float) -> None:
        """Waits, at most `timeout` seconds, until every submitted call was sent."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (self._waiting or self._sending) and \
                asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._flusher is not None:
            await cancel_and_wait(self._flusher)


class Metering:
    def __init__(self, channel: grpc.aio.Channel, settlements: Settlements):
        self._reserve = channel.unary_unary(
            RESERVE_METHOD, request_serializer=auth_pb2.ReserveRequest.SerializeToString,
            response_deserializer=auth_pb2.ReserveResponse.FromString)
        self._settlements = settlements

    async def __call__(self, call: GenerationCall, next_stage: Next) -> Events:
        tenancy = call.tenancy
        model = call.model.pool.name
        # The ledger's key: one per call. A client's x-request-id may repeat (a retry, or on
        # purpose), and a repeated key would be settled once: a second call for free.
        ledger_id = f"{call.request_id}.{secrets.token_hex(4)}"
        if needs_reservation(tenancy.policy):
            await self._reserve_for(call, model, ledger_id)
        completion, first_token_at, outcome = 0, None, "cancelled"
        try:
            async for event in next_stage(call):
                if type(event) is bytes:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    completion += delta_token_count(event)
                elif event.HasField("finished"):
                    finished = event.finished
                    completion = finished.usage.completion_tokens
                    call.prompt_tokens = finished.usage.prompt_tokens
                    finished.cost_micro_usd = cost_micro_usd(
                        tenancy.policy, model, call.prompt_tokens, completion)
                    outcome = inference_pb2.FinishReason.Name(finished.finish_reason)
                yield event
        except CallRefused as refusal:
            outcome = f"failed: {refusal.code.name}"
            raise
        finally:
            now = time.perf_counter()
            self._settlements.submit(auth_pb2.SettleRequest(
                request_id=ledger_id, tenant_id=tenancy.tenant, model=model,
                replica=call.replica, prompt_tokens=call.prompt_tokens,
                completion_tokens=completion, outcome=outcome, labels=call.request.labels,
                time_to_first_token=None if first_token_at is None
                else duration(first_token_at - call.arrived),
                total=duration(now - call.arrived)))

    async def _reserve_for(self, call: GenerationCall, model: str, ledger_id: str) -> None:
        request = auth_pb2.ReserveRequest(
            request_id=ledger_id, tenant_id=call.tenancy.tenant, model=model,
            max_prompt_tokens=prompt_token_bound(call.request),
            max_completion_tokens=call.request.sampling.max_tokens, labels=call.request.labels)
        try:
            await self._reserve(request, timeout=2.0)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                grpc.StatusCode.FAILED_PRECONDITION,
                                grpc.StatusCode.INVALID_ARGUMENT):
                raise PassedOn(error.code(), error.details() or "",
                               error.trailing_metadata()) from None
            # Auth may have held something before the answer was lost: release it now rather
            # than when the reservation expires. Budgets fail closed: a call that cannot be
            # paid for is not served.
            self._settlements.submit(auth_pb2.SettleRequest(
                request_id=ledger_id, tenant_id=call.tenancy.tenant, model=model,
                outcome=f"failed: reserve {error.code().name}", labels=call.request.labels,
                total=duration(time.perf_counter() - call.arrived)))
            raise RequestRejected(
                grpc.StatusCode.UNAVAILABLE,
                f"the call could not be reserved against tenant {call.tenancy.tenant!r}'s "
                f"limits ({error.code().name}); retry shortly", reason="ACCOUNTING_UNAVAILABLE",
                retry_after=1.0) from None

"""Paying for each call: the stream stage that reserves before generation, puts the cost on the
finished event, and settles with the auth service when the stream ends, however it ends.

The tenant and its policy come from Envoy's headers (meshllm.tenancy). Reserve is called only
when the policy has something to hold (a budget, a tokens-per-minute or concurrency limit), so
an unmetered tenant's first token waits for no extra call. Settle runs after the stream, off
the client's path, and is retried while auth is away: it is idempotent on the request id."""
import asyncio
import secrets
import time

import grpc
from google.protobuf import duration_pb2

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.inference.v1 import inference_pb2
from meshllm.errors import CallRefused
from meshllm.logging import get_logger
from meshllm.tenancy import cost_micro_usd
from services.router.delta_tokens import delta_token_count
from services.router.errors import PassedOn, RequestRejected
from services.router.pipeline import Events, GenerationCall, Next

log = get_logger(__name__)
RESERVE_METHOD = "/meshllm.auth.v1.UsageService/Reserve"
SETTLE_METHOD = "/meshllm.auth.v1.UsageService/Settle"
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


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class Settlements:
    """Settle calls in the background, retried while auth cannot be reached; `drain` waits for
    the ones in flight when the router stops."""

    def __init__(self, channel: grpc.aio.Channel, attempts: int = 10):
        self._settle = channel.unary_unary(
            SETTLE_METHOD, request_serializer=auth_pb2.SettleRequest.SerializeToString,
            response_deserializer=auth_pb2.SettleResponse.FromString)
        self._attempts = attempts
        self._pending: set[asyncio.Task] = set()

    def submit(self, request: auth_pb2.SettleRequest) -> None:
        task = asyncio.get_running_loop().create_task(self._send(request))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, request: auth_pb2.SettleRequest) -> None:
        for attempt in range(self._attempts):
            try:
                await self._settle(request, timeout=5.0)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.error("settle_refused", request_id=request.request_id,
                              code=error.code().name, detail=error.details())
                    return
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))
        log.error("settle_lost", request_id=request.request_id, tenant=request.tenant_id,
                  attempts=self._attempts)

    async def drain(self, timeout: float) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)


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
                else _duration(first_token_at - call.arrived),
                total=_duration(now - call.arrived)))

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
                total=_duration(time.perf_counter() - call.arrived)))
            raise RequestRejected(
                grpc.StatusCode.UNAVAILABLE,
                f"the call could not be reserved against tenant {call.tenancy.tenant!r}'s "
                f"limits ({error.code().name}); retry shortly", reason="ACCOUNTING_UNAVAILABLE",
                retry_after=1.0) from None

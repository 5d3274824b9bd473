"""The router's calls to the moderation service, through Envoy's mesh listener: one
ModerateText for a request's input, one ModerateStream for its output. Each carries the
tenant's headers (moderation judges under the caller's policy), the request id and the trace.
A call that fails or takes too long raises ModerationUnavailable; the caller applies the
tenant's fail mode."""
import asyncio

import grpc

from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.channels import carried_metadata, client_span, end_span
from services.router.errors import PassedOn
from services.router.pipeline import GenerationCall

MODERATE_TEXT_METHOD = "/meshllm.moderation.v1.ModerationService/ModerateText"
MODERATE_STREAM_METHOD = "/meshllm.moderation.v1.ModerationService/ModerateStream"


class ModerationUnavailable(Exception):
    """Moderation could not answer: unreachable, failing or too slow. `unreleased` is the
    output text sent to it that it never released (what a fail-open stream still owes)."""

    def __init__(self, reason: str, unreleased: str = ""):
        super().__init__(reason)
        self.unreleased = unreleased


def _metadata(call: GenerationCall, span) -> list:
    return [*carried_metadata(span), *call.tenancy.metadata()]


def _timeout(call: GenerationCall, limit: float) -> float:
    remaining = call.time_remaining()
    return limit if remaining is None else max(0.0, min(limit, remaining))


class ModerationClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float):
        self._moderate_text = channel.unary_unary(
            MODERATE_TEXT_METHOD, request_serializer=m.ModerateTextRequest.SerializeToString,
            response_deserializer=m.ModerateTextResponse.FromString)
        self._moderate_stream = channel.stream_stream(
            MODERATE_STREAM_METHOD,
            request_serializer=m.ModerateStreamRequest.SerializeToString,
            response_deserializer=m.ModerateStreamResponse.FromString)
        self._timeout = timeout_seconds

    async def moderate_input(self, call: GenerationCall,
                             texts: list[str]) -> m.ModerateTextResponse:
        span = client_span(MODERATE_TEXT_METHOD)
        code = grpc.StatusCode.OK
        try:
            return await self._moderate_text(
                m.ModerateTextRequest(texts=texts, stage=m.STAGE_INPUT),
                timeout=_timeout(call, self._timeout), metadata=_metadata(call, span))
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise PassedOn(code, error.details() or "", error.trailing_metadata()) from None
            raise ModerationUnavailable(f"{code.name}: {error.details()}") from None
        finally:
            end_span(span, code)

    def output(self, call: GenerationCall) -> "OutputModeration":
        def open_stream(span):
            return self._moderate_stream(timeout=call.time_remaining(),
                                         metadata=_metadata(call, span))
        return OutputModeration(open_stream, self._timeout)


class OutputModeration:
    """One generation's ModerateStream: a window in, its verdict out, one at a time. The call
    opens with the first window, so a generation refused before any text (a full replica)
    costs moderation nothing, and no stream is reset unused."""

    def __init__(self, open_stream, timeout: float):
        self._open_stream = open_stream
        self._stream = None
        self._span = None
        self._ended = False
        self._timeout = timeout
        self._withheld = ""
        """The end of the text sent so far that moderation has not released yet."""

    async def judge(self, text: str, end: bool = False) -> m.ModerateStreamResponse:
        if self._stream is None:
            self._span = client_span(MODERATE_STREAM_METHOD)
            self._stream = self._open_stream(self._span)
        unreleased = self._withheld + text
        try:
            await self._stream.write(m.ModerateStreamRequest(text=text, end=end))
            if end:  # half-closed before the service answers, so that neither side resets
                await self._stream.done_writing()
            verdict = await asyncio.wait_for(self._stream.read(), self._timeout)
        except asyncio.TimeoutError:
            raise ModerationUnavailable(f"no verdict within {self._timeout:g} s",
                                        unreleased) from None
        except grpc.aio.AioRpcError as error:
            raise ModerationUnavailable(f"{error.code().name}: {error.details()}",
                                        unreleased) from None
        except asyncio.InvalidStateError:  # the call ended before this window was written
            raise ModerationUnavailable(await self._ended_early(), unreleased) from None
        if verdict is grpc.aio.EOF:
            raise ModerationUnavailable(await self._ended_early(), unreleased)
        self._withheld = unreleased[len(unreleased) - verdict.held_chars:] \
            if verdict.held_chars else ""
        if end or verdict.action == m.ACTION_BLOCK:
            await self._finish()
        return verdict

    async def _finish(self) -> None:
        """After the last verdict: half-close (if not yet) and take the service's status, so
        that the call ends cleanly rather than by a reset. Envoy closes a connection (a
        GOAWAY that takes every stream on it, generation's too) once most of its streams
        were reset within a second of starting, which short moderated calls would be."""
        try:
            await self._stream.done_writing()
            await asyncio.wait_for(self._stream.code(), self._timeout)  # the trailers
            self._ended = True
        except (asyncio.TimeoutError, asyncio.InvalidStateError, grpc.aio.AioRpcError):
            pass  # close() resets what did not end

    async def _ended_early(self) -> str:
        code = await self._stream.code()
        return f"the stream ended early ({code.name}: {await self._stream.details()})"

    def close(self) -> None:
        """Resets the call only if it has not ended: the generation failed or its client went
        away before the last window."""
        if self._stream is None:
            return
        if not self._ended:
            self._stream.cancel()
        end_span(self._span, grpc.StatusCode.OK)

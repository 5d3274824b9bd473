"""The router's Search calls to the retrieval service, through Envoy's mesh listener, with the
tenant's headers (retrieval looks the collection up among that tenant's own), the request id
and the trace. A refusal of the request itself (no such collection, not allowed, bad filter)
is passed on to the client as retrieval gave it; any other failure, or no answer in time,
raises RetrievalUnavailable, and the request's options decide what that means."""
import grpc

from meshllm.api.retrieval.v1 import retrieval_pb2 as r
from meshllm.channels import carried_metadata, client_span, end_span
from services.router.errors import PassedOn
from services.router.pipeline import GenerationCall

SEARCH_METHOD = "/meshllm.retrieval.v1.RetrievalService/Search"
_PASSED_ON = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.PERMISSION_DENIED)


class RetrievalUnavailable(Exception):
    """Retrieval could not answer: unreachable, failing or too slow."""


class RetrievalClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float):
        self._search = channel.unary_stream(
            SEARCH_METHOD, request_serializer=r.SearchRequest.SerializeToString,
            response_deserializer=r.SearchResponse.FromString)
        self._timeout = timeout_seconds

    async def search(self, call: GenerationCall, request: r.SearchRequest) -> list[r.Passage]:
        span = client_span(SEARCH_METHOD)
        code = grpc.StatusCode.OK
        remaining = call.time_remaining()
        timeout = self._timeout if remaining is None else max(0.0, min(self._timeout, remaining))
        try:
            return [passage async for response in self._search(
                request, timeout=timeout,
                metadata=[*carried_metadata(span), *call.tenancy.metadata()])
                for passage in response.passages]
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _PASSED_ON:
                raise PassedOn(code, error.details() or "", error.trailing_metadata()) from None
            raise RetrievalUnavailable(f"{code.name}: {error.details()}") from None
        finally:
            end_span(span, code)

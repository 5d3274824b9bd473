"""A client channel that sends an API key with every call, as the public listener requires."""
import grpc

API_KEY_ENV = "MESHLLM_API_KEY"


def bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


def _with_key(details: grpc.aio.ClientCallDetails, key) -> grpc.aio.ClientCallDetails:
    return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *key))


# grpc.aio files an interceptor under the first kind it is an instance of: one class per kind.
class _UnaryUnaryKey(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, key):
        self._key = key

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_key(details, self._key), request)


class _UnaryStreamKey(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, key):
        self._key = key

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_key(details, self._key), request)


class _StreamUnaryKey(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, key):
        self._key = key

    async def intercept_stream_unary(self, continuation, details, requests):
        return await continuation(_with_key(details, self._key), requests)


class _StreamStreamKey(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, key):
        self._key = key

    async def intercept_stream_stream(self, continuation, details, requests):
        return await continuation(_with_key(details, self._key), requests)


class KeyedStub:
    """A stub whose calls carry `api_key` in their metadata, with no interceptor in the way
    (benchmarks: an interceptor adds work to every streamed message)."""

    def __init__(self, stub, api_key: str):
        self._stub = stub
        self._metadata = bearer(api_key)

    def __getattr__(self, method: str):
        call = getattr(self._stub, method)
        return lambda request, **options: call(request, metadata=self._metadata, **options)


def keyed_channel(target: str, api_key: str, secure: bool = False) -> grpc.aio.Channel:
    """A channel to the mesh's public endpoint whose every call carries `api_key`."""
    key = bearer(api_key)
    interceptors = [_UnaryUnaryKey(key), _UnaryStreamKey(key), _StreamUnaryKey(key),
                    _StreamStreamKey(key)]
    if secure:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(),
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(target, interceptors=interceptors)

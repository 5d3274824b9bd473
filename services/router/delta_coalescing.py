"""Generation's stream as the router forwards it: raw bytes, deltas never re-parsed, and the
deltas that piled up while the client was slow sent as one.

The public and internal `GenerateResponse` put `DeltaEvent` at the same field number, so a
delta's bytes from generation are a valid public event as they are. A reader task takes
messages off the call as they arrive; the forwarder takes everything waiting at once. When the
client keeps up that is one message, passed through untouched; when it falls behind (flow
control), the waiting deltas are merged into one — the only time the router parses a delta."""
import asyncio
from collections.abc import AsyncIterator

import grpc

from meshllm.api.inference.v1 import inference_pb2

# The first byte of a serialized GenerateResponse is its event's tag (field << 3 | 2).
STARTED_TAG, DELTA_TAG, FINISHED_TAG = 0x0A, 0x12, 0x1A


def merge_deltas(deltas: list[bytes]) -> bytes:
    """One delta event with the text and token ids of `deltas`, in order."""
    if len(deltas) == 1:
        return deltas[0]
    events = [inference_pb2.GenerateResponse.FromString(raw).delta for raw in deltas]
    return inference_pb2.GenerateResponse(delta=inference_pb2.DeltaEvent(
        text="".join(event.text for event in events),
        token_ids=[token for event in events for token in event.token_ids],
    )).SerializeToString()


def coalesce(messages: list[bytes]) -> list[bytes]:
    """Runs of consecutive deltas merged; started, finished and the order kept."""
    out: list[bytes] = []
    run: list[bytes] = []
    for raw in messages:
        if raw[0] == DELTA_TAG:
            run.append(raw)
            continue
        if run:
            out.append(merge_deltas(run))
            run = []
        out.append(raw)
    if run:
        out.append(merge_deltas(run))
    return out


class _End:
    """Marks the end of the upstream stream in the waiting list (an error, or None at EOF)."""

    def __init__(self, error: grpc.aio.AioRpcError | None):
        self.error = error


async def coalesced(call) -> AsyncIterator[bytes]:
    """The raw messages of a unary-stream `call` (made with no response deserializer), with
    deltas that waited merged. Raises the call's AioRpcError if it fails."""
    waiting: list = []
    arrived = asyncio.Event()

    async def read_all() -> None:
        try:
            while (raw := await call.read()) is not grpc.aio.EOF:
                waiting.append(raw)
                arrived.set()
            waiting.append(_End(None))
        except grpc.aio.AioRpcError as error:
            waiting.append(_End(error))
        arrived.set()

    reader = asyncio.create_task(read_all())
    try:
        while True:
            if not waiting:
                arrived.clear()
                await arrived.wait()
            batch = waiting[:]
            waiting.clear()
            end = batch.pop() if isinstance(batch[-1], _End) else None
            for raw in coalesce(batch):
                yield raw
            if end is not None:
                if end.error is not None:
                    raise end.error
                return
    finally:
        reader.cancel()

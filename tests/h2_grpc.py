"""A gRPC call over a raw HTTP/2 connection (the `h2` library) whose reader can stop granting
flow-control window: grpc's own clients read ahead on their own, so they cannot make a
server's write block on purpose."""
import asyncio
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings


class BlockingReader:
    """One server-streaming call; the server may send at most `window` bytes of it until
    `read_more` grants more, which it never does unless told."""

    def __init__(self, host: str, port: int, window: int = 1024):
        self._address = (host, port)
        self._window = window
        self.received = bytearray()
        self.ended = asyncio.Event()
        self._arrived = asyncio.Event()

    async def start(self, path: str, request: bytes, timeout_seconds: int = 60,
                    headers: list[tuple[str, str]] = ()) -> None:
        self._reader, self._writer = await asyncio.open_connection(*self._address)
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self._h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._window})
        self._h2.initiate_connection()
        self._stream = self._h2.get_next_available_stream_id()
        host, port = self._address
        self._h2.send_headers(self._stream, [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", f"{host}:{port}"), ("content-type", "application/grpc"),
            ("te", "trailers"), ("grpc-timeout", f"{timeout_seconds}S"), *headers])
        self._h2.send_data(self._stream, struct.pack(">BI", 0, len(request)) + request,
                           end_stream=True)
        await self._flush()
        self._pump = asyncio.create_task(self._read_frames())

    async def _flush(self) -> None:
        self._writer.write(self._h2.data_to_send())
        await self._writer.drain()

    async def _read_frames(self) -> None:
        while data := await self._reader.read(65536):
            for event in self._h2.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.received += event.data  # no window is given back for it
                    self._arrived.set()
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended.set()
            await self._flush()  # settings and ping acknowledgements
        self.ended.set()

    async def wait_for_bytes(self, count: int) -> None:
        while len(self.received) < count:
            self._arrived.clear()
            await self._arrived.wait()

    async def disconnect(self) -> None:
        """Goes away as a crashed or impatient client does: the TCP connection closes."""
        self._pump.cancel()
        self._writer.close()

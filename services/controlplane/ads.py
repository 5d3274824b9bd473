"""The ADS stream server (state of the world): what to send on one stream, and when.

`AdsStream` is the decision, plain and synchronous: requests in (ACK, NACK, subscription
changes), responses out for a snapshot. `serve_stream` is the loop that feeds it from the
request stream and the snapshot cache. `AdsCallbacks` are the hooks for logs and tests.
"""
import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from meshllm.logging import get_logger
from services.controlplane.resources import pack
from services.controlplane.snapshot import CLUSTER, ENDPOINT, PUSH_ORDER, Snapshot, SnapshotCache

log = get_logger(__name__)


class AdsCallbacks:
    """Hooks called on stream events; this one logs them. Override for metrics or tests."""

    def on_stream_open(self, stream_id: int, node_id: str) -> None:
        log.info("ads_stream_open", stream_id=stream_id, node_id=node_id)

    def on_stream_closed(self, stream_id: int) -> None:
        log.info("ads_stream_closed", stream_id=stream_id)

    def on_response(self, stream_id: int, type_url: str, version: str, names: list[str]) -> None:
        log.info("ads_sent", stream_id=stream_id, type_url=type_url, version=version,
                 resources=len(names))

    def on_ack(self, stream_id: int, type_url: str, version: str) -> None:
        log.debug("ads_ack", stream_id=stream_id, type_url=type_url, version=version)

    def on_nack(self, stream_id: int, type_url: str, rejected_version: str,
                kept_version: str, error: str) -> None:
        """Envoy refused `rejected_version` and keeps serving `kept_version`."""
        log.error("ads_nack", stream_id=stream_id, type_url=type_url,
                  rejected_version=rejected_version, kept_version=kept_version, error=error)

    def on_held(self, stream_id: int, seconds_left: float) -> None:
        log.info("ads_held_for_reregistration", stream_id=stream_id,
                 seconds_left=round(seconds_left, 3))


@dataclass
class _Subscription:
    """One type URL on one stream: what Envoy asked for and what it was sent."""

    names: frozenset[str]          # empty: every resource of the type (wildcard)
    sent_version: str              # Envoy's version_info until we send
    sent_names: frozenset[str] | None = None
    nonce: str = ""                # of the last response; requests with another are stale
    pending: bool = False          # names changed or a resend is due


@dataclass
class AdsStream:
    """The state of one ADS stream.

    Sends a type when its version differs from what this stream last sent (or Envoy's
    initial version_info), or when Envoy asks for other names; in PUSH_ORDER, CDS then EDS
    then LDS then RDS, and EDS again after every CDS response (an updated EDS cluster
    otherwise sits warming until its initial fetch timeout). A NACK leaves the rejected
    version as sent, so it is not pushed again until the snapshot changes.
    A stream whose Envoy already held a config (non-empty version_info on its first request)
    gets nothing while `holding`, so a restarted control plane never replaces the last good
    config with one built before the replicas re-registered.
    """

    stream_id: int
    callbacks: AdsCallbacks = field(default_factory=AdsCallbacks)
    resuming: bool = False
    node_id: str = ""
    _subs: dict[str, _Subscription] = field(default_factory=dict)
    _nonces: itertools.count = field(default_factory=lambda: itertools.count(1))

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        if request.node.id and not self.node_id:
            self.node_id = request.node.id
            self.callbacks.on_stream_open(self.stream_id, self.node_id)
        type_url = request.type_url
        if not type_url:
            return
        names = frozenset(request.resource_names)
        sub = self._subs.get(type_url)
        if sub is None:
            self.resuming = self.resuming or bool(request.version_info)
            self._subs[type_url] = _Subscription(names=names, sent_version=request.version_info)
            return
        if request.response_nonce != sub.nonce:
            return  # answers a response that a newer one already replaced
        if request.HasField("error_detail"):
            self.callbacks.on_nack(self.stream_id, type_url, sub.sent_version,
                                   request.version_info, request.error_detail.message)
        elif sub.nonce:
            self.callbacks.on_ack(self.stream_id, type_url, request.version_info)
        if names != sub.names:
            sub.names = names
            sub.pending = True

    def responses(self, snapshot: Snapshot | None,
                  holding: bool = False) -> list[discovery_pb2.DiscoveryResponse]:
        """The responses due now for this snapshot, in make-before-break order."""
        if snapshot is None or (holding and self.resuming):
            return []
        out = []
        for type_url in PUSH_ORDER:
            sub = self._subs.get(type_url)
            if sub is None:
                continue
            current = snapshot.of_type(type_url)
            due = sub.pending or current.version != sub.sent_version
            if not due:
                continue
            names = sorted(sub.names & current.by_name.keys() if sub.names else current.by_name)
            sub.nonce = str(next(self._nonces))
            sub.sent_version, sub.sent_names, sub.pending = current.version, frozenset(names), False
            out.append(discovery_pb2.DiscoveryResponse(
                version_info=current.version, type_url=type_url, nonce=sub.nonce,
                resources=[pack(current.by_name[n]) for n in names]))
            self.callbacks.on_response(self.stream_id, type_url, current.version, names)
            if type_url == CLUSTER and ENDPOINT in self._subs:
                self._subs[ENDPOINT].pending = True
        return out


_stream_ids = itertools.count(1)


async def serve_stream(requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
                       cache: SnapshotCache,
                       callbacks: AdsCallbacks | None = None,
                       ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
    """Answers one ADS stream until Envoy closes it (or the call is cancelled)."""
    stream = AdsStream(stream_id=next(_stream_ids), callbacks=callbacks or AdsCallbacks())
    inbox: asyncio.Queue = asyncio.Queue()
    wake = cache.watch()

    async def read() -> None:
        try:
            async for request in requests:
                inbox.put_nowait(request)
                wake.set()
        finally:
            inbox.put_nowait(None)
            wake.set()

    reader = asyncio.create_task(read(), name=f"ads-read-{stream.stream_id}")
    try:
        while True:
            wake.clear()
            while not inbox.empty():
                request = inbox.get_nowait()
                if request is None:
                    return
                stream.on_request(request)
            holding = cache.holding()
            for response in stream.responses(cache.snapshot, holding):
                yield response
            timeout = None
            if holding and stream.resuming:
                stream.callbacks.on_held(stream.stream_id, cache.seconds_until_release())
                timeout = cache.seconds_until_release()
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except TimeoutError:
                pass  # the re-registration grace is over
    finally:
        cache.unwatch(wake)
        reader.cancel()
        stream.callbacks.on_stream_closed(stream.stream_id)
        if not reader.cancelled() and reader.done() and reader.exception() is not None:
            log.warning("ads_stream_read_failed", stream_id=stream.stream_id,
                        error=str(reader.exception()))

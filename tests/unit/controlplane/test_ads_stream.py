import asyncio

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from services.controlplane import resources
from services.controlplane.ads import AdsCallbacks, AdsStream, serve_stream
from services.controlplane.registry import Replica
from services.controlplane.snapshot import (
    CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache, build_snapshot,
)

LAYOUT = resources.EnvoyLayout()
TINY = resources.generation_cluster_name("tiny")


class RecordingCallbacks(AdsCallbacks):
    def __init__(self):
        self.acks, self.nacks = [], []

    def on_ack(self, stream_id, type_url, version):
        self.acks.append((type_url, version))

    def on_nack(self, stream_id, type_url, rejected_version, kept_version, error):
        self.nacks.append((type_url, rejected_version, kept_version, error))


def snap(*ports: int, model: str = "tiny", router: bool = False):
    replicas = [Replica(f"g{p}", "generation", "127.0.0.1", p, model=model) for p in ports]
    if router:
        replicas.append(Replica("rt", "router", "127.0.0.1", 9))
    return build_snapshot(replicas, LAYOUT)


def request(type_url, names=(), version="", nonce="", error=None):
    message = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), version_info=version,
        response_nonce=nonce, node=base_pb2.Node(id="envoy-1"))
    if error:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def ack(response, names=()):
    return request(response.type_url, names, response.version_info, response.nonce)


def subscribed(snapshot, *type_urls):
    """A stream that asked for these types and ACKed what it got."""
    stream = AdsStream(stream_id=1, callbacks=RecordingCallbacks())
    for type_url in type_urls:
        stream.on_request(request(type_url))
    for response in stream.responses(snapshot):
        stream.on_request(ack(response))
    return stream


def test_first_requests_get_every_resource_with_a_version_and_nonce():
    stream = AdsStream(stream_id=1)
    stream.on_request(request(CLUSTER))
    stream.on_request(request(LISTENER))
    sent = stream.responses(snap(1))
    assert [r.type_url for r in sent] == [CLUSTER, LISTENER]
    assert all(r.version_info and r.nonce for r in sent)
    assert len({r.nonce for r in sent}) == 2
    assert len(sent[0].resources) == 5  # router, auth, moderation, retrieval and tiny
    assert stream.responses(snap(1)) == []


def test_a_change_to_every_type_goes_out_clusters_endpoints_listeners_routes():
    stream = subscribed(snap(1), ROUTE, LISTENER, ENDPOINT, CLUSTER)
    sent = stream.responses(snap(1, 2, model="other"))
    assert [r.type_url for r in sent] == [CLUSTER, ENDPOINT, ROUTE]  # listeners did not change


def test_an_endpoint_change_sends_endpoints_alone():
    stream = subscribed(snap(1), CLUSTER, ENDPOINT, LISTENER, ROUTE)
    assert [r.type_url for r in stream.responses(snap(1, 2))] == [ENDPOINT]


def test_endpoints_are_sent_again_after_every_cluster_change_even_when_unchanged():
    stream = subscribed(snap(1), CLUSTER, ENDPOINT)
    changed_clusters = build_snapshot(
        [Replica("g1", "generation", "127.0.0.1", 1, model="tiny")],
        resources.EnvoyLayout(connect_timeout_seconds=2.0))
    sent = stream.responses(changed_clusters)
    assert [r.type_url for r in sent] == [CLUSTER, ENDPOINT]
    assert sent[1].version_info == snap(1).of_type(ENDPOINT).version


def test_endpoints_go_only_for_the_names_envoy_asked_for_and_again_when_they_change():
    stream = AdsStream(stream_id=1)
    stream.on_request(request(ENDPOINT, names=[TINY]))
    (first,) = stream.responses(snap(1))
    assert len(first.resources) == 1
    stream.on_request(ack(first, names=[TINY, "router"]))
    (second,) = stream.responses(snap(1))
    assert len(second.resources) == 2
    assert second.version_info == first.version_info


def test_an_ack_is_recorded_and_nothing_is_resent():
    stream = subscribed(snap(1), CLUSTER)
    assert stream.callbacks.acks == [(CLUSTER, snap(1).of_type(CLUSTER).version)]
    assert stream.responses(snap(1)) == []


def test_a_nack_is_reported_with_envoys_error_and_the_rejected_version_is_not_resent():
    stream = subscribed(snap(1), CLUSTER)
    good = snap(1).of_type(CLUSTER).version
    (bad,) = stream.responses(snap(1, model="other"))
    stream.on_request(request(CLUSTER, version=good, nonce=bad.nonce, error="Proto constraint"))
    assert stream.callbacks.nacks == [(CLUSTER, bad.version_info, good, "Proto constraint")]
    assert stream.responses(snap(1, model="other")) == []
    assert [r.type_url for r in stream.responses(snap(1))] == [CLUSTER]


def test_a_request_with_a_stale_nonce_is_ignored():
    stream = subscribed(snap(1), ENDPOINT)
    (newer,) = stream.responses(snap(1, 2))
    stream.on_request(request(ENDPOINT, names=["whatever"], nonce="stale"))
    assert stream.callbacks.nacks == [] and stream.responses(snap(1, 2)) == []
    stream.on_request(ack(newer))
    assert len(stream.callbacks.acks) == 2


def test_an_envoy_that_reconnects_with_the_current_versions_gets_nothing_new():
    current = snap(1)
    stream = AdsStream(stream_id=2)
    for type_url in (CLUSTER, LISTENER):
        stream.on_request(request(type_url, version=current.of_type(type_url).version))
    assert stream.responses(current) == []


def test_an_envoy_holding_a_config_gets_nothing_during_the_reregistration_grace():
    stream = AdsStream(stream_id=3)
    stream.on_request(request(CLUSTER, version="from-before-the-restart"))
    stream.on_request(request(ENDPOINT, names=[TINY], version="from-before-the-restart"))
    assert stream.responses(snap(), holding=True) == []
    assert [r.type_url for r in stream.responses(snap(1), holding=False)] == [CLUSTER, ENDPOINT]


def test_a_fresh_envoy_is_served_during_the_grace():
    stream = AdsStream(stream_id=4)
    stream.on_request(request(CLUSTER))
    assert len(stream.responses(snap(), holding=True)) == 1


class FakeEnvoy:
    """Feeds serve_stream from a queue, as grpc.aio feeds it from the wire."""

    def __init__(self, cache):
        self.requests: asyncio.Queue = asyncio.Queue()
        self.responses = serve_stream(self._iterate(), cache, RecordingCallbacks())

    async def _iterate(self):
        while (item := await self.requests.get()) is not None:
            yield item

    async def next(self) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(anext(self.responses), 2)


async def test_serve_stream_answers_requests_and_pushes_new_snapshots():
    cache = SnapshotCache()
    cache.set(snap(1))
    envoy = FakeEnvoy(cache)
    envoy.requests.put_nowait(request(CLUSTER))
    clusters = await envoy.next()
    assert clusters.type_url == CLUSTER
    envoy.requests.put_nowait(ack(clusters))
    envoy.requests.put_nowait(request(ENDPOINT, names=[TINY, "router"]))
    assert (await envoy.next()).type_url == ENDPOINT
    cache.set(snap(1, 2))
    pushed = await envoy.next()
    assert pushed.type_url == ENDPOINT and len(pushed.resources[0].value) > 0
    envoy.requests.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await envoy.next()


async def test_serve_stream_releases_a_held_envoy_when_the_grace_ends():
    loop = asyncio.get_running_loop()
    cache = SnapshotCache(hold_until=loop.time() + 0.2)
    cache.set(snap(1))
    envoy = FakeEnvoy(cache)
    envoy.requests.put_nowait(request(CLUSTER, version="from-before-the-restart"))
    started = loop.time()
    response = await envoy.next()
    assert response.type_url == CLUSTER
    assert loop.time() - started >= 0.15
    await envoy.responses.aclose()

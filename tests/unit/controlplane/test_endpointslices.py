"""EndpointSlices become registry replicas: slices recorded as the API server returns them
(`kubectl get endpointslices -o json`, fixtures/endpointslices/list.json) and a recorded
watch (watch-events.jsonl: a pod turns ready, a new one is not yet, one terminates on
scale-down, a bookmark, a Service is deleted)."""
import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient, Configuration

from services.controlplane.endpointslices import (EndpointSliceDiscovery, EndpointSliceWatch,
                                                  InvalidSlice, KubernetesSlices, WatchExpired,
                                                  replicas_of)
from services.controlplane.registry import Replica, ReplicaRegistry

FIXTURES = Path(__file__).parent / "fixtures" / "endpointslices"
GENERATION_0 = "generation-tiny-llama-7c9f8d6b5-x2k4p"
GENERATION_1 = "generation-tiny-llama-7c9f8d6b5-q8m3n"
ROUTERS = {"router-6d8b9f7c4-hw5tz", "router-6d8b9f7c4-9vjkr"}
AUTH = "auth-5b7c8d9f6-mt2xq"


def recorded_slices() -> list[dict]:
    return json.loads((FIXTURES / "list.json").read_text())["items"]


def recorded_events() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "watch-events.jsonl").read_text().splitlines()]


def recorded(service: str) -> dict:
    (found,) = [s for s in recorded_slices()
                if s["metadata"]["labels"]["app.kubernetes.io/name"] == service]
    return found


@pytest.fixture
def registry(clock):
    return ReplicaRegistry(lease_ttl=10, clock=clock)


@pytest.fixture
def discovery(registry):
    return EndpointSliceDiscovery(registry)


def ids(registry) -> set[str]:
    return {replica.replica_id for replica in registry.live()}


def test_the_recorded_objects_follow_the_kubernetes_schema():
    objects = recorded_slices() + [e["object"] for e in recorded_events() if e["type"] != "BOOKMARK"]
    for slice_ in objects:
        kubernetes_validate.validate(slice_, "1.37.0", strict=True)


def test_a_generation_pools_ready_pods_are_replicas_of_the_model_its_service_is_labelled_with():
    assert replicas_of(recorded("generation")) == [
        Replica(GENERATION_0, "generation", "10.244.1.17", 50051, model="tiny-llama")]


def test_router_and_auth_pods_are_replicas_on_their_grpc_port_without_a_model():
    routers = replicas_of(recorded("router"))
    assert {r.replica_id for r in routers} == ROUTERS
    assert {(r.service, r.port, r.model) for r in routers} == {("router", 50051, "")}
    assert [(r.replica_id, r.host) for r in replicas_of(recorded("auth"))] == [
        (AUTH, "10.244.2.11")]


def test_a_slice_from_the_kubernetes_client_converts_as_its_json_does():
    model = ApiClient().deserialize(json.dumps(recorded("router")), "V1EndpointSlice",
                                    "application/json")
    assert replicas_of(model) == replicas_of(recorded("router"))


def test_an_endpoint_without_a_ready_condition_counts_as_ready_as_the_api_says():
    slice_ = recorded("generation")
    del slice_["endpoints"][1]["conditions"]["ready"]
    assert {r.replica_id for r in replicas_of(slice_)} == {GENERATION_0, GENERATION_1}


def _unlabelled(s):
    del s["metadata"]["labels"]["app.kubernetes.io/name"]


def _modelless(s):
    del s["metadata"]["labels"]["meshllm.dev/model"]


def _unnamed_port(s):
    s["ports"][0]["name"] = "http2"


@pytest.mark.parametrize("spoil, says", [
    (_unlabelled, "no app.kubernetes.io/name label"),
    (_modelless, "without a meshllm.dev/model label"),
    (_unnamed_port, "no port named 'grpc'"),
])
def test_a_slice_that_cannot_describe_replicas_is_refused_saying_what_to_change(spoil, says):
    slice_ = recorded("generation")
    spoil(slice_)
    with pytest.raises(InvalidSlice, match=says):
        replicas_of(slice_)


def test_a_list_registers_every_ready_pod_and_a_later_list_drops_what_went_meanwhile(
        discovery, registry):
    discovery.resync(recorded_slices())
    assert ids(registry) == {GENERATION_0, AUTH, *ROUTERS}
    discovery.resync([recorded("generation"), recorded("auth")])  # the router Service went
    assert ids(registry) == {GENERATION_0, AUTH}


def test_the_recorded_watch_adds_ready_pods_drops_terminating_ones_and_deleted_services(
        discovery, registry):
    discovery.resync(recorded_slices())
    expected_after_each = [
        {GENERATION_0, GENERATION_1, AUTH, *ROUTERS},  # the second pool pod turned ready
        {GENERATION_0, GENERATION_1, AUTH, *ROUTERS},  # a new router pod, not ready yet
        {GENERATION_1, AUTH, *ROUTERS},                # scale-down: the first one terminates
        {GENERATION_1, AUTH, *ROUTERS},                # a bookmark changes nothing
        {GENERATION_1, *ROUTERS},                      # the auth Service was deleted
    ]
    for event, expected in zip(recorded_events(), expected_after_each, strict=True):
        discovery.apply(event)
        assert ids(registry) == expected, event["type"]


def test_a_slice_that_turns_invalid_takes_its_replicas_away(discovery, registry):
    discovery.resync(recorded_slices())
    slice_ = recorded("generation")
    _unlabelled(slice_)
    discovery.apply({"type": "MODIFIED", "object": slice_})
    assert GENERATION_0 not in ids(registry)


def test_discovered_replicas_stay_live_past_their_first_lease_while_they_are_renewed(
        discovery, registry, clock):
    discovery.resync(recorded_slices())
    for _ in range(10):
        clock.now += 2  # a fifth of the lease, ten times over
        discovery.renew()
    assert ids(registry) == {GENERATION_0, AUTH, *ROUTERS}


def test_a_replica_that_registered_itself_keeps_its_own_record_and_is_only_renewed(
        discovery, registry, clock):
    own = Replica(GENERATION_0, "generation", "10.244.1.17", 50051, model="tiny-llama",
                  max_context_tokens=2048)
    registry.register(own)
    discovery.resync(recorded_slices())
    clock.now += 8
    discovery.renew()
    clock.now += 8  # past the registration's own lease: the renewal kept it
    assert [r for r in registry.live() if r.replica_id == GENERATION_0] == [own]


class RecordedSource:
    """A SliceSource playing recorded lists and watches; the last watch stays open (as an
    idle one does) until stopped."""

    def __init__(self, lists, watches):
        self.lists, self.watches, self.versions = list(lists), list(watches), []
        self.stopped = threading.Event()

    def list_all(self):
        return self.lists.pop(0)

    def watch(self, resource_version):
        self.versions.append(resource_version)
        played = self.watches.pop(0)
        if isinstance(played, Exception):
            raise played
        yield from played
        if not self.watches:
            self.stopped.wait()

    def stop(self):
        self.stopped.set()


async def eventually(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


async def test_the_watch_resumes_from_the_last_version_and_lists_again_when_it_expired(
        discovery, registry):
    events = recorded_events()
    without_auth = [s for s in recorded_slices() if s["metadata"]["name"] != "auth-w2n4d"]
    source = RecordedSource(
        lists=[(recorded_slices(), "48250"), (without_auth, "48500")],
        watches=[events[:3], WatchExpired("too old resource version"), []])
    watching = asyncio.create_task(
        EndpointSliceWatch(discovery, source, renew_seconds=0.05).run())
    try:
        await eventually(lambda: len(source.versions) == 3)
        # the second list is the first one less the auth Service
        await eventually(lambda: ids(registry) == {GENERATION_0, *ROUTERS})
        assert source.versions == ["48250", "48355", "48500"]
    finally:
        watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching
    assert source.stopped.is_set()


class RecordedApiServer(BaseHTTPRequestHandler):
    """The API server's answers to a list and to watches, as recorded; a second watch is
    told its version expired, as the API server does with a 410 Status in the stream."""

    requests: list[dict] = []

    def do_GET(self):
        query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        self.requests.append({"path": urlparse(self.path).path, **query})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if query.get("watch") != "true":
            body = {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"resourceVersion": "48250"}, "items": recorded_slices()}
            self.wfile.write(json.dumps(body).encode())
        elif sum(1 for r in self.requests if r.get("watch") == "true") == 1:
            self.wfile.write((FIXTURES / "watch-events.jsonl").read_bytes())
        else:
            self.wfile.write(json.dumps({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 48411 (48930)", "reason": "Expired",
                "code": 410}}).encode() + b"\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def api_server():
    RecordedApiServer.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordedApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_kubernetes_client_lists_and_watches_the_labelled_slices_of_the_namespace(
        api_server):
    source = KubernetesSlices("meshllm", watch_seconds=300,
                              api_client=ApiClient(Configuration(host=api_server)))
    slices, version = source.list_all()
    assert (len(slices), version) == (3, "48250")
    assert {r.replica_id for s in slices for r in replicas_of(s)} == {GENERATION_0, AUTH, *ROUTERS}
    events = list(source.watch(version))
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED", "MODIFIED", "BOOKMARK",
                                           "DELETED"]
    assert events == recorded_events()
    with pytest.raises(WatchExpired):
        list(source.watch("48411"))
    listing, watching = RecordedApiServer.requests[:2]
    assert listing["path"] == watching["path"] == \
        "/apis/discovery.k8s.io/v1/namespaces/meshllm/endpointslices"
    assert listing["labelSelector"] == watching["labelSelector"] == "meshllm.dev/discovered=true"
    assert (watching["resourceVersion"], watching["allowWatchBookmarks"],
            watching["timeoutSeconds"]) == ("48250", "true", "300")


"""Replicas from Kubernetes EndpointSlices: on Kubernetes the registry learns where replicas
are, and which are ready, from the API server.

The slices watched are those of Services labelled `meshllm.dev/discovered: "true"`. The
EndpointSlice controller copies a Service's labels onto its slices, so the labels read here
are the Service's: `app.kubernetes.io/name` names the mesh service (generation, router,
auth) and, for a generation pool, `meshllm.dev/model` its model (the served model name; a
label value, so at most 63 characters of letters, digits, `-`, `_` and `.`). Every ready
endpoint is one replica, at its first address and the slice's port named `grpc`. Its id is
its pod's name: the id the replica registers under itself too (the manifests set
MESHLLM_<SERVICE>_REPLICA_ID from the pod's name), so both describe one replica, and the
registration's richer record (its context length) is kept, only renewed.

The official `kubernetes` client blocks on its socket, so the watch runs in a thread of its
own (EndpointSliceWatch); every change is applied on the event loop, where the registry lives.
"""
import asyncio
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from meshllm.logging import get_logger
from meshllm.supervised_thread import SupervisedThread
from services.controlplane.registry import (GENERATION_SERVICE, InvalidReplica, Replica,
                                            ReplicaRegistry, validate)

log = get_logger(__name__)

SELECTOR = "meshllm.dev/discovered=true"
SERVICE_LABEL = "app.kubernetes.io/name"
MODEL_LABEL = "meshllm.dev/model"
PORT_NAME = "grpc"
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")


class InvalidSlice(ValueError):
    """A slice that cannot describe replicas; the message says what to change."""


def as_plain(slice_: Any) -> Mapping[str, Any]:
    """The slice as the API's JSON has it: a dict as a watch returns it, or a model of the
    `kubernetes` client turned into one."""
    if isinstance(slice_, Mapping):
        return slice_
    from kubernetes.client import ApiClient  # imported here: a second or two, on Kubernetes only

    return ApiClient().sanitize_for_serialization(slice_)


def slice_key(slice_: Mapping[str, Any]) -> str:
    metadata = slice_.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def replicas_of(slice_: Any) -> list[Replica]:
    """The ready replicas a slice describes; raises InvalidSlice for one that names no
    service, no model for a generation pool, or no `grpc` port."""
    slice_ = as_plain(slice_)
    labels = (slice_.get("metadata") or {}).get("labels") or {}
    name = slice_key(slice_)
    service = labels.get(SERVICE_LABEL, "")
    if not service:
        raise InvalidSlice(f"EndpointSlice {name} has no {SERVICE_LABEL} label: label its "
                           "Service with the mesh service it runs")
    model = labels.get(MODEL_LABEL, "") if service == GENERATION_SERVICE else ""
    if service == GENERATION_SERVICE and not model:
        raise InvalidSlice(f"EndpointSlice {name} is a generation pool's without a "
                           f"{MODEL_LABEL} label: label its Service with the served model name")
    ports = [port.get("port") for port in slice_.get("ports") or []
             if port.get("name") == PORT_NAME]
    if not ports or not ports[0]:
        raise InvalidSlice(f"EndpointSlice {name} has no port named {PORT_NAME!r}: name the "
                           "Service's gRPC port so")
    if slice_.get("addressType") == "FQDN":
        raise InvalidSlice(f"EndpointSlice {name} lists FQDNs, not addresses")
    replicas = []
    for endpoint in slice_.get("endpoints") or []:
        # The API: a ready condition left out means unknown, which consumers take as ready.
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        addresses = endpoint.get("addresses") or []
        if not addresses:
            continue
        target = endpoint.get("targetRef") or {}
        replica = Replica(replica_id=target.get("name") or f"{name}/{addresses[0]}",
                          service=service, host=addresses[0], port=int(ports[0]), model=model)
        try:
            validate(replica)
        except InvalidReplica as error:
            raise InvalidSlice(f"EndpointSlice {name}: {error}") from None
        replicas.append(replica)
    return replicas


def _same_endpoint(a: Replica, b: Replica) -> bool:
    return (a.service, a.host, a.port, a.model) == (b.service, b.host, b.port, b.model)


class EndpointSliceDiscovery:
    """The replicas the watched slices describe, kept in the registry: registered when they
    appear, renewed while they stay (`renew`, every fifth of a lease), deregistered when they
    go or stop being ready."""

    def __init__(self, registry: ReplicaRegistry):
        self._registry = registry
        self._slices: dict[str, dict[str, Replica]] = {}

    def replicas(self) -> dict[str, Replica]:
        """Every discovered replica by id (a pod in two slices of one Service counts once)."""
        return {replica_id: replica for replicas in self._slices.values()
                for replica_id, replica in replicas.items()}

    def resync(self, slices: Iterable[Any]) -> None:
        """A fresh list of every slice: slices not in it are gone."""
        before = self.replicas()
        self._slices = {}
        for slice_ in map(as_plain, slices):
            self._slices[slice_key(slice_)] = self._replicas_by_id(slice_)
        self._apply_changes(before)

    def apply(self, event: Mapping[str, Any]) -> None:
        """One watch event: {"type": "ADDED" | "MODIFIED" | "DELETED", "object": <slice>};
        other types (BOOKMARK) change nothing."""
        if event.get("type") not in EVENT_TYPES:
            return
        before = self.replicas()
        slice_ = as_plain(event["object"])
        if event["type"] == "DELETED":
            self._slices.pop(slice_key(slice_), None)
        else:
            self._slices[slice_key(slice_)] = self._replicas_by_id(slice_)
        self._apply_changes(before)

    def renew(self) -> None:
        self._keep(self.replicas().values())

    def _replicas_by_id(self, slice_: Any) -> dict[str, Replica]:
        try:
            return {replica.replica_id: replica for replica in replicas_of(slice_)}
        except InvalidSlice as error:
            log.warning("endpointslice_ignored", reason=str(error))
            return {}

    def _apply_changes(self, before: dict[str, Replica]) -> None:
        after = self.replicas()
        gone = sorted(before.keys() - after.keys())
        changed = [replica for replica_id, replica in after.items()
                   if before.get(replica_id) != replica]
        for replica_id in gone:
            self._registry.deregister(replica_id)
        self._keep(changed)
        if gone or changed:
            log.info("endpointslice_replicas", ready=[r.replica_id for r in changed], gone=gone)

    def _keep(self, replicas: Iterable[Replica]) -> None:
        """Registers each replica, or only renews its lease where the registry already holds
        it at the same address (a replica that registered itself said more about itself)."""
        held = {replica.replica_id: replica for replica in self._registry.live()}
        for replica in replicas:
            known = held.get(replica.replica_id)
            if known is not None and _same_endpoint(known, replica) \
                    and self._registry.heartbeat(replica.replica_id):
                continue
            self._registry.register(replica)


class WatchExpired(Exception):
    """The watch's resource version is too old (HTTP 410): list again."""


class SliceSource(Protocol):
    """Where slices come from: the API server (KubernetesSlices), or a test's recording."""

    def list_all(self) -> tuple[list[Any], str]:
        """Every slice, and the resource version of that list."""

    def watch(self, resource_version: str) -> Iterable[Mapping[str, Any]]:
        """The events after `resource_version` until the server ends the watch; raises
        WatchExpired when that version is gone."""

    def stop(self) -> None:
        """Ends a watch in progress, from another thread."""


class EndpointSliceWatch:
    """Follows a SliceSource from a thread of its own, applying every change on the event
    loop, and renews the discovered replicas' leases every `renew_seconds` (a fifth of the
    lease TTL). A failed list or watch is logged and retried after `retry_seconds`."""

    def __init__(self, discovery: EndpointSliceDiscovery, source: SliceSource,
                 renew_seconds: float, retry_seconds: float = 1.0):
        self._discovery = discovery
        self._source = source
        self._renew_seconds = renew_seconds
        self._retry_seconds = retry_seconds
        self._stopping = threading.Event()

    async def run(self) -> None:
        """Until cancelled. The thread is not waited for: a list in flight may take a while
        to answer, and it stops at its next step (a daemon thread, it never holds up the exit)."""
        loop = asyncio.get_running_loop()
        SupervisedThread(lambda: self._follow(loop), "endpointslice-watch", loop).start()
        try:
            while True:
                await asyncio.sleep(self._renew_seconds)
                self._discovery.renew()
        finally:
            self._stopping.set()
            self._source.stop()

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        version = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    slices, version = self._source.list_all()
                    self._on_loop(loop, self._discovery.resync, slices)
                for event in self._source.watch(version):
                    if self._stopping.is_set():
                        return
                    version = _resource_version(event) or version
                    self._on_loop(loop, self._discovery.apply, event)
            except WatchExpired:
                log.info("endpointslice_watch_expired", resource_version=version)
                version = None
            except Exception as error:  # noqa: BLE001 - the API server comes back; so do we
                if self._stopping.is_set():
                    return
                log.warning("endpointslice_watch_failed", error=f"{type(error).__name__}: "
                            f"{error}", retry_seconds=self._retry_seconds)
                version = None
                self._stopping.wait(self._retry_seconds)

    def _on_loop(self, loop: asyncio.AbstractEventLoop, change, argument) -> None:
        try:
            loop.call_soon_threadsafe(change, argument)
        except RuntimeError:  # the loop is closed: the control plane is on its way out
            self._stopping.set()


def _resource_version(event: Mapping[str, Any]) -> str | None:
    metadata = as_plain(event.get("object") or {}).get("metadata") or {}
    return metadata.get("resourceVersion")


class KubernetesSlices:
    """SliceSource on the official `kubernetes` client: the namespace's slices of Services
    labelled for discovery, with the pod's service-account credentials (or a kubeconfig,
    outside a cluster)."""

    def __init__(self, namespace: str, selector: str = SELECTOR, watch_seconds: int = 300,
                 api_client: Any = None):
        from kubernetes import client, config, watch

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        self._api = client.DiscoveryV1Api(api_client)
        self._new_watch = watch.Watch
        self._namespace = namespace
        self._selector = selector
        self._watch_seconds = watch_seconds
        self._watch = None

    def list_all(self) -> tuple[list[Any], str]:
        found = self._api.list_namespaced_endpoint_slice(
            self._namespace, label_selector=self._selector, _request_timeout=(10, 30))
        return list(found.items), found.metadata.resource_version

    def watch(self, resource_version: str) -> Iterator[Mapping[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        self._watch = self._new_watch()
        try:
            for event in self._watch.stream(
                    self._api.list_namespaced_endpoint_slice, self._namespace,
                    label_selector=self._selector, resource_version=resource_version,
                    allow_watch_bookmarks=True, timeout_seconds=self._watch_seconds,
                    # A connection that died silently must not block the watch for ever: the
                    # server ends a watch after timeout_seconds anyway.
                    _request_timeout=(10, self._watch_seconds + 30)):
                yield {"type": event["type"], "object": event["raw_object"]}
        except ApiException as error:
            if error.status == 410:
                raise WatchExpired(str(error)) from None
            raise

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

"""Minimal async reads of Envoy's admin interface (readiness, listeners, /clusters)."""
import asyncio
import json


async def admin_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """GET on the admin port; (status, body), or (0, "") when nothing answers yet."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
    except (OSError, asyncio.TimeoutError):
        return 0, ""
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    except (OSError, asyncio.TimeoutError):
        return 0, ""
    finally:
        writer.close()
    head, _, body = raw.decode(errors="replace").partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
    if "transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(body: str) -> str:
    """The payload of an HTTP/1.1 chunked body (Envoy's admin chunks anything but tiny
    answers, and answers HTTP/1.0 with 426)."""
    payload, rest = [], body
    while rest:
        size_line, _, rest = rest.partition("\r\n")
        size = int(size_line.split(";")[0] or "0", 16)
        if size == 0:
            break
        payload.append(rest[:size])
        rest = rest[size + 2:]  # the chunk, then its CRLF
    return "".join(payload)


async def admin_json(port: int, path: str) -> dict:
    """A JSON admin answer; {} when nothing (or nothing parseable) answers yet."""
    status, body = await admin_get(port, path)
    try:
        return json.loads(body) if status == 200 else {}
    except ValueError:
        return {}


async def envoy_is_ready(port: int) -> bool:
    status, _ = await admin_get(port, "/ready")
    return status == 200


async def cluster_endpoints(port: int, cluster: str) -> set[str]:
    """host:port of every endpoint Envoy knows for `cluster`, from admin /clusters."""
    _, body = await admin_get(port, "/clusters")
    endpoints = set()
    for line in body.splitlines():
        name, _, rest = line.partition("::")
        fields = rest.split("::")
        if name == cluster and len(fields) >= 2 and fields[1] == "cx_active":
            endpoints.add(fields[0])
    return endpoints


async def healthy_endpoints(port: int) -> set[str]:
    """host:port of every endpoint, in any cluster, that passed its health check (Envoy
    sends a new endpoint calls only from then on)."""
    _, body = await admin_get(port, "/clusters")
    return {fields[1] for fields in (line.split("::") for line in body.splitlines())
            if len(fields) >= 4 and fields[2] == "health_flags" and fields[3] == "healthy"}


async def stat(port: int, name: str) -> int:
    """The value of one counter or gauge, from admin /stats."""
    _, body = await admin_get(port, f"/stats?filter=^{name}$")
    for line in body.splitlines():
        if line.startswith(f"{name}: "):
            return int(line.split(": ")[1])
    raise LookupError(f"Envoy has no stat {name}")


async def bound_listeners(port: int) -> dict[str, int]:
    """Listener name → the port it is bound to, for every listener Envoy has opened."""
    statuses = (await admin_json(port, "/listeners?format=json")).get("listener_statuses", [])
    return {status["name"]: status["local_address"]["socket_address"]["port_value"]
            for status in statuses if "socket_address" in status.get("local_address", {})}


async def rejected_listeners(port: int) -> dict[str, str]:
    """Listener name → why Envoy rejected its last LDS update (e.g. "cannot bind
    '127.0.0.1:8080': Address already in use"): the NACK as Envoy itself keeps it."""
    dump = await admin_json(port, "/config_dump?resource=dynamic_listeners")
    return {config.get("name", ""): config["error_state"].get("details", "rejected")
            for config in dump.get("configs", []) if "error_state" in config}

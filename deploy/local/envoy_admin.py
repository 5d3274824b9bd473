"""Minimal async reads of Envoy's admin interface (readiness, /clusters)."""
import asyncio


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
    return status, body


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

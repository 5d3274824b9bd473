"""python -m services.auth: ext_authz and rate limits for Envoy, Reserve/Settle for the
router, and the admin API — all on one port, registered with the control plane."""
import asyncio

from meshllm.observability import configure_observability
from meshllm.registration import register_server
from meshllm.server import MeshServer
from meshllm.tasks import cancel_and_wait
from services.auth.config import AuthSettings
from services.auth.identity_cache import IdentityCache
from services.auth.server import add_auth_services
from services.auth.store import open_store
from services.auth.window_counters import open_counters


async def main(settings: AuthSettings) -> None:
    store = await open_store(settings.database_url)
    counters = open_counters(settings.redis_url)
    identities = IdentityCache(store, settings.cache_refresh_seconds)
    following = asyncio.create_task(identities.follow_store())
    server = MeshServer(settings, service="auth")
    add_auth_services(server, store, counters, identities, settings)
    port = await server.start()
    registration = await register_server(server, settings.replica_id)
    print(f"READY port={port}", flush=True)
    await server.wait_for_shutdown_signal()
    if registration is not None:
        await registration.stop()
    await server.drain()
    await cancel_and_wait(following)
    await counters.close()
    await store.close()


if __name__ == "__main__":
    settings = AuthSettings()
    configure_observability("auth", settings)
    asyncio.run(main(settings))

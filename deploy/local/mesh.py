"""The whole mesh on one machine: control plane, Envoy, router, generation replicas.

`make up` runs it in the foreground; the e2e tests run it on free ports."""
import asyncio
import itertools
import os
import socket
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.local.autoscaling import ScaledProcesses, follow_autoscaler
from deploy.local.cpu_layout import cpu_layout
from deploy.local.envoy_admin import envoy_is_ready, healthy_endpoints
from deploy.local.supervisor import ManagedProcess, Supervisor
from deploy.local.warm_pool import WarmPool
from services.controlplane.bootstrap import render_bootstrap
from services.controlplane.envoy_binary import envoy_binary_path
from services.auth.dev_tenant import ensure_dev_tenant
from services.auth.store import open_store
from meshllm.tasks import cancel_and_wait
from services.generation.config import TINY_MODEL_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MeshPorts:
    controlplane: int = 18000
    public: int = 8080
    mesh: int = 8081
    admin: int = 9901

    @classmethod
    def free(cls) -> "MeshPorts":
        """Four ports nothing listens on now, for tests and benchmarks beside a running mesh."""
        sockets = [socket.socket() for _ in range(4)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        ports = [sock.getsockname()[1] for sock in sockets]
        for sock in sockets:
            sock.close()
        return cls(*ports)


@dataclass(frozen=True)
class MeshOptions:
    ports: MeshPorts = MeshPorts()
    engine: str = "vllm"
    model: str = str(TINY_MODEL_DIR)
    workdir: Path = REPO_ROOT / ".meshllm" / "run"
    host: str = "127.0.0.1"
    generation_env: tuple[tuple[str, str], ...] = ()
    """Extra environment for every generation replica (e.g. the sim engine's timings)."""
    auth_replicas: int = 1
    database_url: str = ""
    """The auth store; empty is SQLite in the work dir (kept across restarts)."""
    redis_url: str = ""
    """Shared rate-limit counters; empty keeps them in each auth replica."""
    auth_env: tuple[tuple[str, str], ...] = ()
    moderation_replicas: int = 1
    moderation_env: tuple[tuple[str, str], ...] = ()
    retrieval_replicas: int = 0
    """`make up` runs one; a test mesh only when it grounds generations (the router calls
    retrieval only for requests that name a collection)."""
    retrieval_env: tuple[tuple[str, str], ...] = ()
    router_env: tuple[tuple[str, str], ...] = ()
    controlplane_env: tuple[tuple[str, str], ...] = ()
    open_tenant: str = ""
    """Public inference calls need no key and belong to this tenant (benchmarks)."""
    mesh_cpus: int = 1
    """With vLLM on CPU: cores kept for every process but the engine's worker (cpu_layout)."""
    autoscale: bool = False
    """The autoscaler decides how many generation replicas run (from 0 up), not `start`'s
    count; routers hold calls for a pool at zero while a replica starts."""
    scaling_config: str = ""
    """The autoscaler's TOML settings; empty: services/controlplane/scaling.toml."""
    warm_pool_size: int = 0
    """With autoscale: generation processes kept with their engine imported, waiting to
    become the next replica the autoscaler asks for (a shorter cold start)."""

    def auth_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.workdir / 'auth.db'}"


class LocalMesh:
    def __init__(self, options: MeshOptions):
        self.options = options
        self.supervisor = Supervisor()
        self.controlplane: ManagedProcess | None = None
        self.envoy: ManagedProcess | None = None
        self.routers: dict[str, ManagedProcess] = {}
        self.generation: dict[str, ManagedProcess] = {}
        self.auth: dict[str, ManagedProcess] = {}
        self.moderation: dict[str, ManagedProcess] = {}
        self.retrieval: dict[str, ManagedProcess] = {}
        self.api_key = ""
        """The dev tenant's admin key: `authorization: Bearer <api_key>` on public calls."""
        self.cpu_layout = cpu_layout(options.engine, options.mesh_cpus)
        self._replica_ids = (f"generation-{n}" for n in itertools.count(1))
        self._auth_ids = (f"auth-{n}" for n in itertools.count(1))
        self._moderation_ids = (f"moderation-{n}" for n in itertools.count(1))
        self._retrieval_ids = (f"retrieval-{n}" for n in itertools.count(1))
        self._router_ids = (f"router-{n}" for n in itertools.count(1))
        self._autoscaling: asyncio.Task | None = None
        self._warm_ids = (f"warm-{n}" for n in itertools.count(1))
        self.warm_pool: WarmPool | None = None

    @property
    def router(self) -> ManagedProcess | None:
        """The first router (the one a mesh that does not autoscale runs)."""
        return next(iter(self.routers.values()), None)

    def _python(self, name: str, module: str, env: dict[str, str]) -> ManagedProcess:
        return ManagedProcess(name, [sys.executable, "-m", module], env=env,
                              cpus=self.mesh_cpus())

    def _service_replica(self, service: str, replica_id: str,
                         env: dict[str, str]) -> ManagedProcess:
        """`python -m services.<service>` on the mesh's host, registering with its control
        plane as `replica_id`, with `env` on top."""
        prefix, host = f"MESHLLM_{service.upper()}_", self.options.host
        return self._python(replica_id, f"services.{service}", {
            f"{prefix}HOST": host,
            f"{prefix}REPLICA_ID": replica_id,
            f"{prefix}CONTROLPLANE_ADDRESS": f"{host}:{self.options.ports.controlplane}",
            **env,
        })

    def mesh_cpus(self) -> tuple[int, ...]:
        """Where the mesh's own processes run; () leaves them to the kernel."""
        return self.cpu_layout.mesh if self.cpu_layout else ()

    async def start(self, generation_replicas: int = 1) -> None:
        """Starts every process, and returns once Envoy sends calls to all of them."""
        if self.cpu_layout:
            # The caller (make up, a test, a benchmark client) is one of the mesh's processes
            # too: left on the engine's cores it would wait seconds for its turn.
            os.sched_setaffinity(0, self.cpu_layout.mesh)
        await self.start_controlplane()
        await self.start_envoy()
        self.api_key = await self.ensure_dev_key()
        # Auth before the router: processes stop newest first, and a router that stops after
        # auth could not send its last settlements.
        await asyncio.gather(*(self.add_auth_replica() for _ in range(self.options.auth_replicas)))
        await asyncio.gather(
            self.start_router(),
            *(self.add_moderation_replica() for _ in range(self.options.moderation_replicas)),
            *(self.add_retrieval_replica() for _ in range(self.options.retrieval_replicas)),
            *(self.add_generation_replica() for _ in range(generation_replicas)))
        await self.wait_until_routed([self.router, *self.auth.values(),
                                      *self.moderation.values(), *self.retrieval.values(),
                                      *self.generation.values()])
        if self.options.autoscale:
            await self.start_autoscaling()

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata that makes a public call the dev tenant's."""
        return (("authorization", f"Bearer {self.api_key}"),)

    async def ensure_dev_key(self) -> str:
        store = await open_store(self.options.auth_database_url())
        try:
            return await ensure_dev_tenant(store, self.options.workdir / "dev-api-key")
        finally:
            await store.close()

    async def add_auth_replica(self) -> ManagedProcess:
        return await self.supervisor.start(self.auth_replica(), timeout=60)

    def auth_replica(self) -> ManagedProcess:
        """An auth replica, listed in `auth` but not started yet."""
        replica_id = next(self._auth_ids)
        process = self._service_replica("auth", replica_id, {
            "MESHLLM_DATABASE_URL": self.options.auth_database_url(),
            "MESHLLM_REDIS_URL": self.options.redis_url,
            **dict(self.options.auth_env),
        })
        self.auth[replica_id] = process
        return process

    async def add_moderation_replica(self) -> ManagedProcess:
        return await self.supervisor.start(self.moderation_replica(), timeout=120)

    def moderation_replica(self) -> ManagedProcess:
        """A moderation replica, listed in `moderation` but not started yet. Every replica
        shares the verdict trail's file and signing key in the work dir."""
        replica_id = next(self._moderation_ids)
        process = self._service_replica("moderation", replica_id, {
            "MESHLLM_MODERATION_AUDIT_DATABASE": str(self.options.workdir / "moderation-audit.db"),
            "MESHLLM_MODERATION_AUDIT_SIGNING_KEY": str(
                self.options.workdir / "moderation-audit.key"),
            **dict(self.options.moderation_env),
        })
        self.moderation[replica_id] = process
        return process

    async def add_retrieval_replica(self) -> ManagedProcess:
        return await self.supervisor.start(self.retrieval_replica(), timeout=120)

    def retrieval_replica(self) -> ManagedProcess:
        """A retrieval replica, listed in `retrieval` but not started yet, on the embedded
        store in the work dir (one replica's: the autoscaler keeps one, scaling.toml)."""
        replica_id = next(self._retrieval_ids)
        process = self._service_replica("retrieval", replica_id, {
            "MESHLLM_RETRIEVAL_LANCE_DIRECTORY": str(self.options.workdir / "retrieval"),
            **dict(self.options.retrieval_env),
        })
        self.retrieval[replica_id] = process
        return process

    @asynccontextmanager
    async def running(self, generation_replicas: int = 1):
        """The started mesh, stopped on the way out however the block ends."""
        try:
            await self.start(generation_replicas)
            yield self
        finally:
            await self.stop()

    async def wait_until_routed(self, processes: list[ManagedProcess],
                                timeout: float = 30.0) -> None:
        """Envoy gives a new endpoint calls only once its first health check passed; a process
        that printed READY may not be routed to yet. RuntimeError naming the ones that never
        passed within `timeout`."""
        addresses = {f"{self.options.host}:{process.port}": process.name
                     for process in processes}
        deadline = asyncio.get_running_loop().time() + timeout
        while missing := set(addresses) - await healthy_endpoints(self.options.ports.admin):
            if asyncio.get_running_loop().time() > deadline:
                names = ", ".join(sorted(addresses[address] for address in missing))
                raise RuntimeError(f"Envoy did not route to {names} within {timeout:.0f} s: "
                                   "their gRPC health checks did not pass")
            await asyncio.sleep(0.05)

    async def start_controlplane(self) -> ManagedProcess:
        ports, host = self.options.ports, self.options.host
        self.controlplane = await self.supervisor.start(self._python(
            "controlplane", "services.controlplane", {
                "MESHLLM_CONTROLPLANE_HOST": host,
                "MESHLLM_CONTROLPLANE_PORT": str(ports.controlplane),
                "MESHLLM_CONTROLPLANE_LISTEN_HOST": host,
                "MESHLLM_CONTROLPLANE_PUBLIC_PORT": str(ports.public),
                "MESHLLM_CONTROLPLANE_MESH_PORT": str(ports.mesh),
                "MESHLLM_CONTROLPLANE_OPEN_TENANT": self.options.open_tenant,
                "MESHLLM_CONTROLPLANE_AUTOSCALING": str(self.options.autoscale).lower(),
                "MESHLLM_CONTROLPLANE_SCALING_CONFIG": self.options.scaling_config,
                **dict(self.options.controlplane_env),
            }), timeout=60)
        return self.controlplane

    async def start_envoy(self) -> ManagedProcess:
        ports = self.options.ports
        self.options.workdir.mkdir(parents=True, exist_ok=True)
        bootstrap = self.options.workdir / f"envoy-{ports.admin}.yaml"
        bootstrap.write_text(render_bootstrap(
            controlplane_host=self.options.host, controlplane_port=ports.controlplane,
            admin_port=ports.admin, node_id=f"meshllm-local-{ports.admin}"))
        self.envoy = await self.supervisor.start(ManagedProcess(
            "envoy",
            [str(envoy_binary_path()), "-c", str(bootstrap), "--use-dynamic-base-id",
             "--log-level", "warn", "--drain-time-s", "5"],
            ready_probe=lambda: envoy_is_ready(ports.admin), cpus=self.mesh_cpus()), timeout=60)
        return self.envoy

    async def start_router(self) -> ManagedProcess:
        return await self.supervisor.start(self.router_replica(), timeout=60)

    def router_replica(self) -> ManagedProcess:
        """A router, listed in `routers` but not started yet."""
        replica_id = next(self._router_ids)
        process = self._service_replica("router", replica_id, {
            "MESHLLM_ROUTER_MESH_ADDRESS": f"{self.options.host}:{self.options.ports.mesh}",
            **dict(self.options.router_env),
        })
        self.routers[replica_id] = process
        return process

    async def add_generation_replica(self, replica_id: str | None = None) -> ManagedProcess:
        process = self.generation_replica(replica_id)
        await self.supervisor.start(process, timeout=300)
        return process

    def generation_replica(self, replica_id: str | None = None) -> ManagedProcess:
        """A generation replica, listed in `generation` but not started yet."""
        replica_id = replica_id or next(self._replica_ids)
        process = self._generation_process(replica_id)
        self.generation[replica_id] = process
        return process

    def warm_generation_process(self) -> ManagedProcess:
        """A generation process that imports its engine and waits for an assignment."""
        process = self._generation_process(next(self._warm_ids))
        process.env["MESHLLM_GENERATION_WARM"] = "true"
        process.warm = True
        return process

    async def start_generation_replica(self, process: ManagedProcess) -> ManagedProcess:
        """Starts `process` (from generation_replica): as a warm process given its
        assignment when the warm pool has one, else from nothing."""
        warm = self.warm_pool.take() if self.warm_pool is not None else None
        if warm is None:
            return await self.supervisor.start(process, timeout=300)
        self.generation[process.name] = warm
        return await warm.assign(process.name, process.env, timeout=300)

    def _generation_process(self, replica_id: str) -> ManagedProcess:
        ports, host = self.options.ports, self.options.host
        process = self._python(replica_id, "services.generation", {
            "MESHLLM_GENERATION_HOST": host,
            "MESHLLM_GENERATION_REPLICA_ID": replica_id,
            "MESHLLM_GENERATION_CONTROLPLANE_ADDRESS": f"{host}:{ports.controlplane}",
            "MESHLLM_ENGINE": self.options.engine,
            "MESHLLM_MODEL": self.options.model,
            **(self.cpu_layout.engine_env() if self.cpu_layout else {}),
            **dict(self.options.generation_env),
        })
        if self.cpu_layout:
            process.cpus = self.cpu_layout.engine
        return process

    async def start_autoscaling(self) -> None:
        """From now on the autoscaler decides how many generation, router and auth replicas
        run."""
        def scaled(replicas: dict[str, ManagedProcess], new_replica, start_timeout: float):
            return ScaledProcesses(
                replicas, new_replica, stop=self.supervisor.stop,
                start=lambda process: self.supervisor.start(process, timeout=start_timeout))

        if self.options.warm_pool_size:
            self.warm_pool = WarmPool(
                self.options.warm_pool_size, self.warm_generation_process,
                start=lambda process: self.supervisor.start(process, timeout=300))
            self.warm_pool.fill()
        ports, host = self.options.ports, self.options.host
        services = {"generation": ScaledProcesses(
                        self.generation, self.generation_replica,
                        start=self.start_generation_replica, stop=self.supervisor.stop),
                    "router": scaled(self.routers, self.router_replica, 60),
                    "auth": scaled(self.auth, self.auth_replica, 60),
                    "moderation": scaled(self.moderation, self.moderation_replica, 120),
                    "retrieval": scaled(self.retrieval, self.retrieval_replica, 120)}
        self._autoscaling = asyncio.create_task(
            follow_autoscaler(f"{host}:{ports.controlplane}", services), name="autoscaling")

    async def stop(self) -> None:
        if self._autoscaling is not None:
            await cancel_and_wait(self._autoscaling)
        if self.warm_pool is not None:
            await self.warm_pool.close()
        await self.supervisor.stop_all()

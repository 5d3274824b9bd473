"""What `make up` runs: MESHLLM_LOCAL_* (plus MESHLLM_ENGINE and MESHLLM_MODEL)."""
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.local.mesh import MeshOptions, MeshPorts
from services.generation.config import TINY_MODEL_DIR


class LocalMeshSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHLLM_LOCAL_", extra="ignore")

    public_port: int = 8080
    mesh_port: int = 8081
    admin_port: int = 9901
    controlplane_port: int = 18000
    generation_replicas: int = 1
    engine: str = Field(default="vllm", validation_alias=AliasChoices("MESHLLM_ENGINE"))
    model: str = Field(default=str(TINY_MODEL_DIR), validation_alias=AliasChoices("MESHLLM_MODEL"))

    def options(self) -> MeshOptions:
        return MeshOptions(
            ports=MeshPorts(controlplane=self.controlplane_port, public=self.public_port,
                            mesh=self.mesh_port, admin=self.admin_port),
            engine=self.engine, model=self.model)

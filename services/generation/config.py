"""Settings of a generation replica: MESHLLM_GENERATION_*, plus MESHLLM_ENGINE and MESHLLM_MODEL."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from meshllm.settings import ServiceSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL_DIR = REPO_ROOT / ".meshllm" / "models" / "tiny-llama"


def _replica_id() -> str:
    return f"generation-{uuid.uuid4().hex[:8]}"


class GenerationSettings(ServiceSettings):
    """Defaults run the real vLLM engine on the tiny offline model on a laptop."""

    model_config = SettingsConfigDict(
        env_prefix="MESHLLM_GENERATION_", extra="ignore", populate_by_name=True
    )

    engine: Literal["vllm", "sim"] = Field(
        default="vllm",
        validation_alias=AliasChoices("engine", "MESHLLM_GENERATION_ENGINE", "MESHLLM_ENGINE"),
    )
    """"vllm" (the default) or "sim" (deterministic timing, no model; mesh load tests only)."""
    model: str = Field(
        default=str(TINY_MODEL_DIR),
        validation_alias=AliasChoices("model", "MESHLLM_GENERATION_MODEL", "MESHLLM_MODEL"),
    )
    """A Hugging Face model id or a local directory; the default tiny model is built if missing."""
    served_model_name: str = ""
    """The name callers put in `model`; empty: a local directory's name, else the model id."""
    replica_id: str = Field(default_factory=_replica_id)
    max_model_len: int = 2048
    """Longest prompt plus completion in tokens; 0 takes the model's own limit."""
    kv_cache_gib: float = 1.0
    """KV cache the engine reserves; small so several replicas fit on one machine."""
    max_waiting_requests: int = 64
    """Requests past this many waiting in the engine's queue get RESOURCE_EXHAUSTED."""
    max_running_requests: int = 0
    """Requests the engine runs at once (vLLM's max_num_seqs); 0 keeps the engine's default
    (the sim engine's: 256)."""
    stream_messages_per_second: float = 300.0
    """Delta messages per second this replica's streams share (docs/streaming.md): a stream
    waits open_streams / this between deltas, and sends what gathered meanwhile in one."""
    stream_max_chunk_delay_seconds: float = 0.05
    """The longest a stream's next delta waits for more tokens, however busy the replica."""
    stream_interval: int = 1
    """vLLM's own stream_interval: tokens the engine gathers before it emits an output."""
    sim_time_to_first_token_seconds: float = 0.05
    sim_inter_token_latency_seconds: float = 0.01
    sim_load_seconds: float = 0.0
    """How long the sim engine takes to start, as loading a model would: cold starts."""
    sim_text: str = ""
    """The text the sim engine generates, repeated; empty: a fixed sentence about the mesh."""
    sim_echo_prompt: bool = False
    """The sim engine generates the prompt it was sent (what reached the engine), repeated."""

    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        # A local directory (existing, or a path still to build) is named after its last part;
        # a Hugging Face id ("org/name") is its own name.
        path = Path(self.model)
        looks_local = path.is_absolute() or self.model.startswith(".") or path.is_dir()
        return path.name if looks_local else self.model

    def is_default_tiny_model(self) -> bool:
        # Both sides resolved: `.meshllm` may be a symlink (a worktree sharing one model).
        return Path(self.model).resolve() == TINY_MODEL_DIR.resolve()

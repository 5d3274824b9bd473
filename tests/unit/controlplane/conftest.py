import json
import subprocess

import pytest
import yaml
from google.protobuf import json_format

from services.controlplane.bootstrap import render_bootstrap
from services.controlplane.envoy_binary import envoy_binary_path
from tests.fake_clock import FakeClock


def _as_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def envoy_validate(tmp_path):
    """Checks a config with `envoy --mode validate`: the real bootstrap plus static resources."""

    def validate(clusters=(), listeners=(), bootstrap_text: str | None = None) -> None:
        config = yaml.safe_load(bootstrap_text or render_bootstrap("127.0.0.1", 18000, 9901, "t"))
        config["static_resources"]["clusters"].extend(_as_dict(c) for c in clusters)
        config["static_resources"]["listeners"] = [_as_dict(item) for item in listeners]
        path = tmp_path / "envoy.json"
        path.write_text(json.dumps(config))
        result = subprocess.run(
            [str(envoy_binary_path()), "--mode", "validate", "-c", str(path),
             "--use-dynamic-base-id", "-l", "error"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr

    return validate

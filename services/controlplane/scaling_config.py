"""Autoscaling settings per service and per generation pool, read from one TOML file.

scaling.toml beside this module holds the defaults and documents every key; a deployment may
pass its own file of the same shape. Tables merge from general to specific: [defaults] <-
[services.<name>] for a service; [defaults] <- [pools.default] <- [pools."<model>"] for a
pool. Every table is checked when the file is loaded, so a bad file stops the control plane
at its start, with the file, the table and the key in the message, not at the first burst.
"""
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from services.controlplane.autoscaling import ScalingSettings

EMBEDDED_CONFIG = Path(__file__).with_name("scaling.toml")
_KEYS = tuple(field.name for field in fields(ScalingSettings))
_INTEGER_KEYS = ("min_replicas", "max_replicas")
_TOP_LEVEL_TABLES = ("defaults", "services", "pools")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ScalingConfigError(ValueError):
    """A scaling file that cannot be used; the message names the file, the table and the key."""


@dataclass(frozen=True)
class ScalingConfig:
    """Every service's and pool's settings, merged and checked."""

    service_defaults: ScalingSettings
    """[defaults]: a service without a table of its own."""
    services: Mapping[str, ScalingSettings]
    pool_defaults: ScalingSettings
    """[defaults] <- [pools.default]: a pool without a table of its own."""
    pools: Mapping[str, ScalingSettings]

    def for_service(self, service: str) -> ScalingSettings:
        return self.services.get(service, self.service_defaults)

    def for_pool(self, model: str) -> ScalingSettings:
        return self.pools.get(model, self.pool_defaults)


def load_scaling_config(path: str | Path | None = None) -> ScalingConfig:
    """Reads `path`, or with None the embedded scaling.toml."""
    path = EMBEDDED_CONFIG if path is None else Path(path)
    try:
        document = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise ScalingConfigError(f"{path}: cannot read it: {error.strerror or error}") from error
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ScalingConfigError(f"{path}: not valid TOML: {error}") from error
    return _build(path, document)


def _build(path: Path, document: dict[str, Any]) -> ScalingConfig:
    for name in document:
        if name not in _TOP_LEVEL_TABLES:
            raise ScalingConfigError(
                f"{path}: unknown top-level table or key {name!r} "
                f"(known: [defaults], [services.<name>], [pools.<model>])")
    defaults = _values(path, "defaults", document.get("defaults", {}))
    services = _named_tables(path, "services", document.get("services", {}))
    pools = _named_tables(path, "pools", document.get("pools", {}))
    pool_defaults = _merge(defaults, pools.pop("default", {}))
    return ScalingConfig(
        service_defaults=_settings(path, "defaults", defaults),
        services={name: _settings(path, _table("services", name), _merge(defaults, values))
                  for name, values in services.items()},
        pool_defaults=_settings(path, "pools.default", pool_defaults),
        pools={name: _settings(path, _table("pools", name), _merge(pool_defaults, values))
               for name, values in pools.items()},
    )


def _named_tables(path: Path, section: str, tables: Any) -> dict[str, dict[str, Any]]:
    """[services.<name>] or [pools.<model>]: each table's values, by name."""
    if not isinstance(tables, dict):
        raise ScalingConfigError(f"{path}: {section} must be a table, got {tables!r}")
    return {name: _values(path, _table(section, name), values) for name, values in tables.items()}


def _values(path: Path, table: str, values: Any) -> dict[str, Any]:
    """One table's keys, each known and of the right type; numbers become floats."""
    if not isinstance(values, dict):
        raise ScalingConfigError(f"{path}: [{table}] must be a table, got {values!r}")
    checked = {}
    for key, value in values.items():
        if key not in _KEYS:
            raise ScalingConfigError(
                f"{path}: [{table}] unknown key {key!r} (known: {', '.join(_KEYS)})")
        # bool is an int to Python, but `min_replicas = true` is a mistake, not a 1.
        if key in _INTEGER_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
            raise ScalingConfigError(f"{path}: [{table}] {key} must be an integer, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScalingConfigError(f"{path}: [{table}] {key} must be a number, got {value!r}")
        checked[key] = value if key in _INTEGER_KEYS else float(value)
    return checked


def _merge(inherited: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    merged = inherited | own
    # An idle timeout cannot apply to a unit that always keeps replicas: a pool that sets
    # min_replicas = 1 under a [pools.default] that scales to zero should not have to unset
    # (TOML has no null) the timeout it inherits. Set in the same table, it is still an error.
    keeps_replicas = merged.get("min_replicas", ScalingSettings.min_replicas) > 0
    if keeps_replicas and "idle_timeout_seconds" not in own:
        merged.pop("idle_timeout_seconds", None)
    return merged


def _settings(path: Path, table: str, values: dict[str, Any]) -> ScalingSettings:
    try:
        return ScalingSettings(**values)
    except ValueError as error:  # its message starts with the key
        raise ScalingConfigError(f"{path}: [{table}] {error}") from error


def _table(section: str, name: str) -> str:
    """A table's name as it is written in the file."""
    return f"{section}.{name}" if _BARE_KEY.fullmatch(name) else f'{section}."{name}"'

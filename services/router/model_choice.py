"""Which model serves a request, and why: plain inputs, no network."""
from dataclasses import dataclass

import grpc

from services.router.errors import RequestRejected


@dataclass(frozen=True)
class ModelPool:
    """A model the registry has replicas for, or one the autoscaler has at zero."""

    name: str
    ready_replicas: int
    max_context_tokens: int
    at_zero: bool = False
    """No replica now, and one starts on demand: a call waits for it (services/router/
    cold_start.py)."""


@dataclass(frozen=True)
class ModelChoice:
    pool: ModelPool
    reason: str


def choose_model(requested: str, pools: dict[str, ModelPool], default_model: str) -> ModelChoice:
    """The pool for a request: the one it names, else the configured default, else the only one."""
    available = ", ".join(sorted(pools)) or "none"
    if requested:
        if requested in pools:
            return ModelChoice(pools[requested], f"requested model {requested!r}")
        raise RequestRejected(
            grpc.StatusCode.NOT_FOUND,
            f"model {requested!r} is not served here; available models: {available} "
            "(ListModels shows them)", reason="MODEL_NOT_FOUND", field="model")
    if default_model:
        if default_model in pools:
            return ModelChoice(pools[default_model], f"no model requested; default {default_model!r}")
        raise RequestRejected(
            grpc.StatusCode.UNAVAILABLE,
            f"no model requested and the default model {default_model!r} has no replica now; "
            f"available models: {available}", reason="DEFAULT_MODEL_UNAVAILABLE",
            retry_after=1.0)
    if len(pools) == 1:
        (pool,) = pools.values()
        return ModelChoice(pool, f"no model requested; {pool.name!r} is the only model served")
    if not pools:
        raise RequestRejected(grpc.StatusCode.UNAVAILABLE,
                              "no generation replica is registered yet; retry shortly",
                              reason="NO_MODEL_SERVED", retry_after=1.0)
    raise RequestRejected(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"several models are served ({available}) and no default is set: name one in 'model'",
        reason="MODEL_REQUIRED", field="model")


def default_model(pools: dict[str, ModelPool], configured_default: str) -> str:
    """The model a request that names none would get now, or "" if such a request would fail."""
    try:
        return choose_model("", pools, configured_default).pool.name
    except RequestRejected:
        return ""

"""One logging setup for every service: every line a service writes is one JSON object.

structlog events and stdlib records (grpc's Python side, vLLM, transformers: anything that
uses `logging`) meet in one stdlib handler on stderr, whose structlog `ProcessorFormatter`
renders both with the same fields: service, level, timestamp, logger, event, plus request_id,
trace_id and tenant while a request binds them.

What this cannot reach: native code that writes to stderr itself (gRPC's C core through
absl, e.g. "E1127 ... add_port.cc:83] Failed to add port", quiet below ERROR unless
GRPC_VERBOSITY / GRPC_TRACE ask for more; torch's C++ warnings), progress bars and prints,
and what a spawned child logs before it has applied our config (its import-time warnings).
"""
import json
import logging
import logging.config
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

_FIELDS = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _level_number(level: str) -> int:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    return numeric


def json_formatter(service: str) -> structlog.stdlib.ProcessorFormatter:
    """Renders structlog events and plain stdlib records alike, as one JSON object a line."""

    def add_service(_, __, event_dict):
        # Here rather than in contextvars: threads (and processes) a library starts do not
        # inherit the context that bound it.
        event_dict.setdefault("service", service)
        return event_dict

    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_FIELDS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            add_service,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )


def stdlib_logging_config(service: str, level: str) -> dict:
    """The stdlib side as a `logging.config.dictConfig`: the root logger to stderr through
    `json_formatter`. A library that configures logging in processes it starts (vLLM's engine
    core and workers) can be handed the same dict, so its children write our lines too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.json_formatter", "service": service}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": logging.getLevelName(_level_number(level))},
    }


def configure_logging(service: str, level: str = "info") -> None:
    """JSON lines on stderr; `request_id`, `trace_id` and `tenant` come from contextvars."""
    numeric = _level_number(level)
    logging.config.dictConfig(stdlib_logging_config(service, level))
    logging.captureWarnings(True)  # warnings.warn (libraries' deprecations) as records too
    structlog.configure(
        processors=[*_FIELDS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


@contextmanager
def logging_config_file(service: str, level: str) -> Iterator[Path]:
    """`stdlib_logging_config` as a JSON file for as long as the block runs: the form a
    library takes when it must configure processes it spawns, which inherit no handlers."""
    with tempfile.TemporaryDirectory(prefix="meshllm-logging-") as directory:
        path = Path(directory) / "logging.json"
        path.write_text(json.dumps(stdlib_logging_config(service, level)))
        yield path


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


def bind_request(**fields: str) -> None:
    """Bind request-scoped fields (request_id, trace_id, tenant) for the current task."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v})

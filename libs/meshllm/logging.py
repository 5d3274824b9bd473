"""One structlog JSON setup for every service: one event per line, with request context."""
import logging
import sys

import structlog


def configure_logging(service: str, level: str = "info") -> None:
    """JSON lines on stderr; `request_id`, `trace_id` and `tenant` come from contextvars."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(module=name)


def bind_request(**fields: str) -> None:
    """Bind request-scoped fields (request_id, trace_id, tenant) for the current task."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v})

"""The one call a service's __main__ makes to set up its logs and traces."""
from meshllm.logging import configure_logging
from meshllm.settings import ServiceSettings
from meshllm.tracing import configure_tracing


def configure_observability(service: str, settings: ServiceSettings) -> None:
    configure_logging(service, settings.log_level)
    configure_tracing(service, settings.otel_console)

"""meshllm shared library: settings, logging, tracing, metrics, server bootstrap, clients."""

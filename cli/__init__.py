"""`meshllm`, the operator's command line: typer commands that call only the mesh's public and
admin gRPC APIs, rich tables for people and `--json` for scripts."""

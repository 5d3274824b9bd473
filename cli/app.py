"""The `meshllm` command line: the root app, its connection options, and `main()`, the one
place a failed call or bad input becomes a line on stderr and an exit code."""
import sys
from typing import Annotated

import grpc
import typer

from cli import admin_keys, admin_policy, admin_tenants, admin_usage, audit, scaling
from cli.connection import (CONTROLPLANE_ENV, DEFAULT_CONTROLPLANE, DEFAULT_ENDPOINT,
                            DEV_KEY_FILE, ENDPOINT_ENV, Connection)
from cli.errors import BAD_INPUT_EXIT, CALL_FAILED_EXIT, InputError, call_error_line, one_line
from meshllm.api_key import API_KEY_ENV

# Exceptions are handled in main(); anything else escaping is a bug and should show as one.
app = typer.Typer(name="meshllm", help="Operate a meshllm mesh through its gRPC APIs.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
admin = typer.Typer(help="The admin API (meshllm.auth.v1.AuthService); needs an admin key.",
                    no_args_is_help=True)
admin.add_typer(admin_tenants.app, name="tenants")
admin.add_typer(admin_keys.app, name="keys")
admin.add_typer(admin_policy.app, name="policy")
admin.command("usage")(admin_usage.usage)
app.add_typer(admin, name="admin")
app.add_typer(audit.app, name="audit")
app.command("status")(scaling.status)
app.command("scale")(scaling.scale)


@app.callback()
def connect(ctx: typer.Context,
            endpoint: Annotated[str, typer.Option(
                envvar=ENDPOINT_ENV, help="The mesh's public gRPC endpoint, host:port.")
            ] = DEFAULT_ENDPOINT,
            api_key: Annotated[str | None, typer.Option(
                envvar=API_KEY_ENV, show_default=False,
                help=f"The API key to send (default: {DEV_KEY_FILE}, where `make up` keeps "
                     "the local mesh's admin key).")] = None,
            tls: Annotated[bool, typer.Option(
                "--tls", help="The endpoint speaks TLS (system root certificates).")
            ] = False,
            controlplane: Annotated[str, typer.Option(
                envvar=CONTROLPLANE_ENV, metavar="HOST:PORT",
                help="The control plane's own gRPC port (not the public endpoint), for "
                     "`status` and `scale`; plaintext, no key.")
            ] = DEFAULT_CONTROLPLANE) -> None:
    ctx.obj = Connection(endpoint, api_key, tls, controlplane)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    try:
        app(prog_name="meshllm")
    except grpc.RpcError as error:
        print(call_error_line(error), file=sys.stderr)
        sys.exit(CALL_FAILED_EXIT)
    except InputError as error:
        print(one_line(f"error: {error}"), file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT)

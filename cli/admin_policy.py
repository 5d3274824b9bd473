"""`meshllm admin policy`: read and replace a tenant's policy, as JSON or YAML files."""
from pathlib import Path
from typing import Annotated

import typer
from rich.json import JSON

from cli.connection import admin_api
from cli.output import JsonFlag, console, message_json, print_json
from cli.policy_file import read_policy
from meshllm.api.auth.v1 import auth_pb2

app = typer.Typer(help="Policies: what a tenant may do and what it pays.",
                  no_args_is_help=True)

TenantId = Annotated[str, typer.Argument(metavar="TENANT", help="The tenant's id.")]


@app.command("get")
def get(ctx: typer.Context, tenant_id: TenantId, json_output: Annotated[bool, typer.Option(
        "--json", help="Print only the policy's JSON, which `policy set --file` reads back.")
        ] = False) -> None:
    """Print a tenant's policy as JSON (proto field names, money in micro-USD)."""
    response = admin_api(ctx).GetPolicy(auth_pb2.GetPolicyRequest(tenant_id=tenant_id))
    if json_output:
        return print_json(response.policy)
    out = console()
    out.print(f"Policy of tenant {tenant_id}, version {response.policy_version}:", markup=False)
    out.print(JSON(message_json(response.policy)))


@app.command("set")
def set_policy(ctx: typer.Context, tenant_id: TenantId,
               file: Annotated[Path, typer.Option(
                   "--file", metavar="FILE",
                   help="The whole new policy, JSON or YAML, e.g. {\"allowed_models\": "
                        "[\"tiny-llama\"], \"requests_per_minute\": 60}. Fields left out "
                        "are cleared.")],
               if_version: Annotated[int, typer.Option(
                   "--if-version", metavar="N", min=0,
                   help="Replace it only if it is still at version N (what `policy get` "
                        "showed), so that a change made meanwhile is not overwritten.")] = 0,
               json_output: JsonFlag = False) -> None:
    """Replace a tenant's policy with the one in FILE."""
    policy = read_policy(file)
    response = admin_api(ctx).UpdatePolicy(auth_pb2.UpdatePolicyRequest(
        tenant_id=tenant_id, policy=policy, expected_policy_version=if_version))
    if json_output:
        return print_json(response)
    console().print(f"Policy of tenant {tenant_id} replaced from {file}: now version "
                    f"{response.policy_version}.", markup=False)

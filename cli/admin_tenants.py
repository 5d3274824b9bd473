"""`meshllm admin tenants`: create, list and show the mesh's tenants."""
from pathlib import Path
from typing import Annotated

import typer
from rich.json import JSON
from rich.table import Table

from cli.connection import admin_api
from cli.output import JsonFlag, budget, cell, console, message_json, print_json, when
from cli.policy_file import read_policy
from meshllm.api.auth.v1 import auth_pb2

app = typer.Typer(help="Tenants: every request belongs to one.", no_args_is_help=True)

TenantId = Annotated[str, typer.Argument(
    metavar="TENANT", help="The tenant's id: 2 to 63 lowercase letters, digits or dashes.")]


def _models(policy: auth_pb2.Policy) -> str:
    return ", ".join(policy.allowed_models) or "all"


@app.command("create")
def create(ctx: typer.Context, tenant_id: TenantId,
           name: Annotated[str, typer.Option("--name", help="Name shown to people "
                                                            "(default: the id).")] = "",
           policy_file: Annotated[Path | None, typer.Option(
               "--policy-file", metavar="FILE",
               help="The tenant's policy, JSON or YAML (default: the mesh's default "
                    "policy).")] = None,
           json_output: JsonFlag = False) -> None:
    """Add a tenant."""
    policy = read_policy(policy_file) if policy_file is not None else None
    response = admin_api(ctx).CreateTenant(auth_pb2.CreateTenantRequest(
        tenant_id=tenant_id, display_name=name, policy=policy))
    if json_output:
        return print_json(response)
    tenant = response.tenant
    console().print(f"Created tenant {tenant.id} ({tenant.display_name}), policy version "
                    f"{tenant.policy_version}.", markup=False)
    console().print(f"Give it a key: meshllm admin keys create {tenant.id}", markup=False)


@app.command("list")
def list_tenants(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """List every tenant."""
    response = admin_api(ctx).ListTenants(auth_pb2.ListTenantsRequest())
    if json_output:
        return print_json(response)
    table = Table("Tenant", "Name", "Created", "Policy version", "Models", "Monthly budget",
                  title=f"{len(response.tenants)} tenants")
    for tenant in response.tenants:
        table.add_row(cell(tenant.id), cell(tenant.display_name), when(tenant, "create_time"),
                      str(tenant.policy_version), cell(_models(tenant.policy)),
                      budget(tenant.policy))
    console().print(table)


@app.command("get")
def get(ctx: typer.Context, tenant_id: TenantId, json_output: JsonFlag = False) -> None:
    """Show one tenant and its policy."""
    response = admin_api(ctx).GetTenant(auth_pb2.GetTenantRequest(tenant_id=tenant_id))
    if json_output:
        return print_json(response)
    tenant = response.tenant
    facts = Table.grid(padding=(0, 2))
    for label, value in (("Tenant", tenant.id), ("Name", tenant.display_name),
                         ("Created", when(tenant, "create_time")),
                         ("Policy version", tenant.policy_version),
                         ("Models", _models(tenant.policy)),
                         ("Monthly budget", budget(tenant.policy))):
        facts.add_row(label, cell(value))
    out = console()
    out.print(facts)
    out.print("Policy:")
    out.print(JSON(message_json(tenant.policy)))

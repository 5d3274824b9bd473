"""`meshllm admin keys`: create (the secret is shown once), list and revoke API keys."""
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from cli.connection import Connection, admin_api
from cli.output import JsonFlag, cell, console, print_json, when
from meshllm.api.auth.v1 import auth_pb2

app = typer.Typer(help="API keys: how callers prove their tenant.", no_args_is_help=True)


class Role(str, Enum):
    client = "client"
    admin = "admin"


_ROLE_VALUES = {Role.client: auth_pb2.API_KEY_ROLE_CLIENT,
                Role.admin: auth_pb2.API_KEY_ROLE_ADMIN}


def role_name(role: int) -> str:
    return auth_pb2.ApiKeyRole.Name(role).removeprefix("API_KEY_ROLE_").lower()


def _how_to_use(connection: Connection) -> str:
    plaintext = "" if connection.tls else "-plaintext "
    return ("Send it as the header `authorization: Bearer <secret>`, for example:\n"
            "  export MESHLLM_API_KEY='<the secret above>'\n"
            f"  grpcurl {plaintext}-H \"authorization: Bearer $MESHLLM_API_KEY\" "
            f"{connection.endpoint} list")


@app.command("create")
def create(ctx: typer.Context,
           tenant_id: Annotated[str, typer.Argument(metavar="TENANT",
                                                    help="The tenant the key is for.")],
           name: Annotated[str, typer.Option("--name",
                                             help="A name for people, e.g. ci.")] = "",
           role: Annotated[Role, typer.Option(
               "--role", help="client: the inference API; admin: also this admin API.")
           ] = Role.client,
           json_output: JsonFlag = False) -> None:
    """Make an API key. Its secret is printed this once: the mesh keeps only a hash."""
    response = admin_api(ctx).CreateApiKey(auth_pb2.CreateApiKeyRequest(
        tenant_id=tenant_id, name=name, role=_ROLE_VALUES[role]))
    if json_output:
        return print_json(response)
    key, out = response.key, console()
    out.print(f"Created {role_name(key.role)} key {key.id} for tenant {key.tenant_id}.",
              markup=False)
    out.print("\nSECRET, shown only now (the mesh keeps only its hash; store it safely):",
              style="bold yellow")
    out.print(f"\n    {response.secret}\n", markup=False)
    out.print(_how_to_use(ctx.find_object(Connection)), markup=False)


@app.command("list")
def list_keys(ctx: typer.Context,
              tenant_id: Annotated[str, typer.Argument(metavar="TENANT")],
              json_output: JsonFlag = False) -> None:
    """List a tenant's keys, revoked ones included. Secrets are never shown again."""
    response = admin_api(ctx).ListApiKeys(auth_pb2.ListApiKeysRequest(tenant_id=tenant_id))
    if json_output:
        return print_json(response)
    table = Table("Key id", "Name", "Role", "Created", "Revoked",
                  title=f"{len(response.keys)} keys of tenant {tenant_id}")
    for key in response.keys:
        table.add_row(cell(key.id), cell(key.name), role_name(key.role),
                      when(key, "create_time"), when(key, "revoke_time") or "active")
    console().print(table)


@app.command("revoke")
def revoke(ctx: typer.Context,
           key_id: Annotated[str, typer.Argument(metavar="KEY_ID",
                                                 help="The key's id, from `keys list`.")],
           json_output: JsonFlag = False) -> None:
    """Stop a key from working (on every auth replica within a second)."""
    response = admin_api(ctx).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=key_id))
    if json_output:
        return print_json(response)
    key = response.key
    console().print(f"Revoked key {key.id} of tenant {key.tenant_id} at "
                    f"{when(key, 'revoke_time')}.", markup=False)

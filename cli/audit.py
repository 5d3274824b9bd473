"""`meshllm audit`: check the moderation verdict trail's hash chain on this machine, and show
the verdicts of one call. Both read the caller's own tenant's trail (an admin key's tenant)."""
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.table import Table

from cli.connection import CALL_TIMEOUT_SECONDS, Connection, resolve_api_key
from cli.errors import InputError
from cli.output import JsonFlag, cell, console, print_json
from meshllm.api.moderation.v1 import moderation_pb2, moderation_pb2_grpc
from meshllm.api_key import bearer
from meshllm.audit_chain import ChainCheck, TrailItem, verify_chain
from meshllm.audit_signing import key_id_of, load_public_key, raw_public_key
from meshllm.moderation_policy import word_for

app = typer.Typer(help="The moderation verdict trail (meshllm.moderation.v1.AuditService); "
                       "needs an admin key.", no_args_is_help=True)

VERIFY_FAILED_EXIT = 1
# A whole trail streams in one call: far longer than an operator call, still not forever.
EXPORT_TIMEOUT_SECONDS = 600.0


class _AuditCalls:
    """AuditService with the command line's key; the channel is the Connection's own."""

    def __init__(self, connection: Connection):
        key = resolve_api_key(connection.api_key)
        self._stub = moderation_pb2_grpc.AuditServiceStub(connection.public_channel())
        self._metadata = bearer(key)

    def list_verdicts(self, request_id: str) -> moderation_pb2.ListVerdictsResponse:
        return self._stub.ListVerdicts(moderation_pb2.ListVerdictsRequest(
            request_id=request_id), metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS)

    def export(self) -> Iterator[moderation_pb2.ExportAuditLogResponse]:
        return self._stub.ExportAuditLog(moderation_pb2.ExportAuditLogRequest(),
                                         metadata=self._metadata,
                                         timeout=EXPORT_TIMEOUT_SECONDS)


def read_public_key(path: Path) -> Ed25519PublicKey:
    """--public-key's file: the raw 32 bytes, 64 hex digits, or PEM."""
    try:
        return load_public_key(path.read_bytes())
    except OSError as error:
        raise InputError(f"cannot read the public key {path}: {error.strerror}") from None
    except ValueError as error:
        raise InputError(f"{path} is not an Ed25519 public key: {error}") from None


@dataclass(frozen=True)
class TrailVerdict:
    """What `verify` found, and which key it trusted to find it."""

    check: ChainCheck
    key_id: str = ""
    server_key_id: str = ""
    server_key_hex: str = ""


def verify_export(responses: Iterable[moderation_pb2.ExportAuditLogResponse],
                  pinned: Ed25519PublicKey | None = None) -> TrailVerdict:
    """Checks an ExportAuditLog stream against the pinned key, or else the key the server
    sent first."""
    responses = iter(responses)
    first = next(responses, None)
    if first is None or first.WhichOneof("item") != "public_key":
        return TrailVerdict(ChainCheck(False, 0, 0, reason="the export did not start with the "
                                                           "server's public key"))
    try:
        server_key = load_public_key(first.public_key)
    except ValueError as error:
        return TrailVerdict(ChainCheck(False, 0, 0, reason=f"the server's public key: {error}"))
    trusted = pinned or server_key
    check = verify_chain(_trail_items(responses), trusted)
    return TrailVerdict(check, key_id_of(trusted), key_id_of(server_key),
                        raw_public_key(server_key).hex())


def _trail_items(responses: Iterator[moderation_pb2.ExportAuditLogResponse]
                 ) -> Iterator[TrailItem]:
    for response in responses:
        kind = response.WhichOneof("item")
        if kind in ("record", "checkpoint"):
            yield getattr(response, kind)


def ok_line(check: ChainCheck) -> str:
    return (f"ok: {check.records} records, {check.checkpoints} checkpoints, chain head "
            f"{check.head_sequence} {check.head_hash[:16]}")


@app.command("verify")
def verify(ctx: typer.Context,
           public_key: Annotated[Path | None, typer.Option(
               "--public-key", metavar="FILE", show_default=False,
               help="The Ed25519 public key to trust (raw 32 bytes, 64 hex digits or PEM); "
                    "default: the one the server sends, which is weaker.")] = None) -> None:
    """Download your tenant's trail and check its hash chain and signed checkpoints here."""
    pinned = read_public_key(public_key) if public_key is not None else None
    verdict = verify_export(_AuditCalls(ctx.find_object(Connection)).export(), pinned)
    if pinned is not None:
        typer.echo(f"Trusting key {verdict.key_id} from {public_key}.", err=True)
        if verdict.server_key_id and verdict.server_key_id != verdict.key_id:
            typer.echo(f"warning: the server says it signs with key {verdict.server_key_id}, "
                       "not the pinned one.", err=True)
    elif verdict.key_id:
        typer.echo(f"Trusting key {verdict.key_id}, as the server sent it. warning: pinning a "
                   "key you already hold with --public-key FILE is stronger (a server that "
                   "rewrote the trail could sign it with a new key); to pin this one, save "
                   f"{verdict.server_key_hex} to a file.", err=True)
    if not verdict.check.ok:
        console().print(f"FAILED: {verdict.check.reason}", markup=False)
        raise typer.Exit(VERIFY_FAILED_EXIT)
    console().print(ok_line(verdict.check), markup=False)


def _enum_name(enum, value: int) -> str:
    """STAGE_INPUT → input; a value this CLI does not know shows as its number."""
    return "-" if value == 0 else word_for(enum, value)


def _time(record: moderation_pb2.AuditRecord) -> str:
    at = record.time.ToDatetime()
    return f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond // 1000:03d} UTC"


def verdict_row(record: moderation_pb2.AuditRecord) -> tuple[str, ...]:
    return (str(record.sequence), _time(record),
            _enum_name(moderation_pb2.Stage, record.stage),
            _enum_name(moderation_pb2.Category, record.category),
            _enum_name(moderation_pb2.Action, record.action),
            record.detector or "-", f"{record.score:.3f}", str(record.policy_version))


@app.command("show")
def show(ctx: typer.Context,
         request_id: Annotated[str, typer.Argument(
             metavar="REQUEST_ID", help="The call's request id (its started event's).")],
         json_output: JsonFlag = False) -> None:
    """Show the moderation verdicts recorded for one call."""
    response = _AuditCalls(ctx.find_object(Connection)).list_verdicts(request_id)
    if json_output:
        return print_json(response)
    table = Table("Sequence", "Time", "Stage", "Category", "Action", "Detector", "Score",
                  "Policy version", title=f"Verdicts of request {request_id}")
    for record in response.records:
        table.add_row(*(cell(value) for value in verdict_row(record)))
    console().print(table)

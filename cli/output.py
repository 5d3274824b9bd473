"""How results are written: rich tables for people, the response's proto JSON for scripts."""
import os
import sys
from typing import Annotated

import typer
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.text import Text

from cli.money import dollars

JsonFlag = Annotated[bool, typer.Option(
    "--json", help="Print the response as JSON (proto field names, money in micro-USD).")]


def message_json(message: Message) -> str:
    """Proto3 JSON with the proto's field names and every field shown: a script sees 0 and []
    instead of a missing key, and a policy printed this way can be read back by `--file`."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2,
                                     always_print_fields_with_no_presence=True)


def print_json(message: Message) -> None:
    # Plain stdout, not rich: a script's JSON must never be wrapped or coloured.
    sys.stdout.write(message_json(message) + "\n")


PIPED_WIDTH = 200
"""Columns for a table written to a pipe or a file (rich would assume 80 and wrap every cell
of a wide table such as `meshllm status`); COLUMNS still wins when set."""


def console() -> Console:
    # soft_wrap: a sentence or a command to copy stays on one line; tables still fit the width.
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, soft_wrap=True, width=PIPED_WIDTH if piped else None)


def cell(value: object) -> Text:
    """Text as given: a tenant's name such as "[bold]" is data, not rich markup."""
    return Text(str(value))


def when(message: Message, name: str) -> str:
    """A Timestamp field as `2026-05-10 12:00:03 UTC`, or "" when it is unset."""
    if not message.HasField(name):
        return ""
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def budget(policy: Message) -> str:
    return (dollars(policy.monthly_budget_micro_usd)
            if policy.HasField("monthly_budget_micro_usd") else "none")

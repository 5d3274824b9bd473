"""`meshllm status` and `meshllm scale`: the control plane's autoscaler, read and overridden
(meshllm.controlplane.v1.ScalingService)."""
import re
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.table import Table

from cli.connection import scaling_api
from cli.errors import InputError
from cli.output import cell, console, print_json, when
from meshllm.api.controlplane.v1 import scaling_pb2

STATE_WORDS = {
    scaling_pb2.SCALING_STATE_SCALED_TO_ZERO: "scaled to zero",
    scaling_pb2.SCALING_STATE_SCALING_UP: "scaling up",
    scaling_pb2.SCALING_STATE_SCALING_DOWN: "scaling down",
    scaling_pb2.SCALING_STATE_STEADY: "steady",
}
COLUMNS = ("Service", "Pool", "Replicas", "State", "Pinned", "In flight", "Held", "Load",
           "Last decision", "When")
JsonFlag = Annotated[bool, typer.Option(
    "--json", help="Print the response as JSON (proto field names), for scripts.")]
UNPIN_WORD = "auto"
_INT32_MAX = 2**31 - 1  # SetScaleRequest.replicas cannot carry more
# SERVICE[/POOL][=COUNT]: the service has no slash; a pool (a model) may hold slashes, so the
# count is what follows the last "=".
_TARGET = re.compile(r"(?P<service>[^/=\s]+)(?:/(?P<pool>[^=].*?))?(?:=(?P<count>[^=]*))?")
_FORMS = (f"SERVICE=N, SERVICE/POOL=N, SERVICE={UNPIN_WORD} or SERVICE --unpin "
          "(e.g. generation=2, generation/Qwen/Qwen2.5-0.5B-Instruct=1, router=auto)")


@dataclass(frozen=True)
class ScaleTarget:
    """What `meshllm scale` was asked: a unit, and a count to pin or None to unpin."""

    service: str
    pool: str
    replicas: int | None

    def request(self) -> scaling_pb2.SetScaleRequest:
        return scaling_pb2.SetScaleRequest(service=self.service, pool=self.pool,
                                           replicas=self.replicas or 0,
                                           unpin=self.replicas is None)


def parse_target(text: str, unpin: bool = False) -> ScaleTarget:
    """`generation=2`, `generation/MODEL=2`, `router=auto`, or `router` with --unpin."""
    match = _TARGET.fullmatch(text.strip())
    if match is None:
        raise InputError(f"cannot read {text!r} as a scale target: expected {_FORMS}")
    service, pool, count = match["service"], match["pool"] or "", match["count"]
    unit = text.strip()
    if count is None and not unpin:
        raise InputError(f"say how many replicas {unit} should keep ({unit}=2) or give it "
                         f"back to the autoscaler ({unit}={UNPIN_WORD} or --unpin)")
    if count is None or count == UNPIN_WORD:
        return ScaleTarget(service, pool, None)
    if unpin:
        raise InputError(f"{text!r} pins a count and --unpin gives it back to the autoscaler: "
                         f"pass one of them")
    if not re.fullmatch(r"[0-9]+", count) or int(count) > _INT32_MAX:
        raise InputError(f"the count in {text!r} must be a whole number of replicas, 0 or "
                         f"more, or {UNPIN_WORD!r} (e.g. {unit.split('=')[0]}=2)")
    return ScaleTarget(service, pool, int(count))


def unit_name(unit: scaling_pb2.ScaledUnit) -> str:
    return f"{unit.service}/{unit.pool}" if unit.pool else unit.service


def state_words(unit: scaling_pb2.ScaledUnit) -> str:
    return STATE_WORDS.get(unit.state, "unknown")


def status_row(unit: scaling_pb2.ScaledUnit) -> tuple[str, ...]:
    """One unit as the table's cells, in COLUMNS' order."""
    return (unit.service, unit.pool, f"{unit.ready_replicas}/{unit.desired_replicas}",
            state_words(unit), "yes" if unit.pinned else "", str(unit.in_flight),
            str(unit.held_calls), f"{unit.load:.2f}", unit.last_decision.reason,
            when(unit.last_decision, "at"))


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"


def unit_line(unit: scaling_pb2.ScaledUnit) -> str:
    """One unit after `meshllm scale`, in a sentence."""
    facts = f"{unit.ready_replicas}/{unit.desired_replicas} ready, {state_words(unit)}"
    if unit.pinned:
        return f"Pinned {unit_name(unit)} at {_replicas(unit.desired_replicas)} ({facts})."
    return (f"{unit_name(unit)} is back with the autoscaler, which wants "
            f"{_replicas(unit.desired_replicas)} ({facts}).")


def status(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Show every scaled service and pool: replicas, load and the last scaling decision."""
    response = scaling_api(ctx).GetScalingStatus(scaling_pb2.GetScalingStatusRequest())
    if json_output:
        return print_json(response)
    if not response.units:
        console().print("No scaled services or pools yet: a unit appears once a replica of it "
                        "registers or its pool is named in the scaling config.", markup=False)
        return
    table = Table(*COLUMNS, title=f"{len(response.units)} scaled services and pools")
    for unit in response.units:
        table.add_row(*(cell(value) for value in status_row(unit)))
    console().print(table)


def scale(ctx: typer.Context,
          target: Annotated[str, typer.Argument(
              metavar="SERVICE[/POOL]=N",
              help="The unit and the replica count to pin, e.g. generation=2, router=1; "
                   "generation/MODEL=2 for one pool among several; SERVICE=auto or "
                   "SERVICE --unpin to give it back to the autoscaler.")],
          unpin: Annotated[bool, typer.Option(
              "--unpin", help="Give the unit back to the autoscaler.")] = False,
          json_output: JsonFlag = False) -> None:
    """Pin a service's or pool's replica count, or give it back to the autoscaler."""
    request = parse_target(target, unpin).request()
    response = scaling_api(ctx).SetScale(request)
    if json_output:
        return print_json(response)
    console().print(unit_line(response.unit), markup=False)

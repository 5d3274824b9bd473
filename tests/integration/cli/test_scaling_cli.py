"""`meshllm status` and `meshllm scale` as an operator runs them: `python -m cli` as a real
subprocess, against a real control plane in this process with a generation replica and a
router registered through its RegistryService."""
import json
import os

import grpc
import pytest

from meshllm.api.controlplane.v1 import registry_pb2, registry_pb2_grpc
from services.controlplane.app import ControlPlane
from services.controlplane.config import ControlPlaneSettings
from tests.integration.cli.cli_runs import Ran, one_line_error, run_cli, succeeded

REPLICAS = (
    registry_pb2.Replica(replica_id="g1", service="generation", model="m1", host="127.0.0.1",
                         port=5000),
    registry_pb2.Replica(replica_id="r1", service="router", host="127.0.0.1", port=5001),
)



@pytest.fixture
async def controlplane():
    # Leases long enough that no registration runs out while the test runs the CLI.
    controlplane = ControlPlane(ControlPlaneSettings(port=0, metrics_port=-1,
                                                     lease_ttl_seconds=120))
    port = await controlplane.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            registry = registry_pb2_grpc.RegistryServiceStub(channel)
            for replica in REPLICAS:
                await registry.RegisterReplica(registry_pb2.RegisterReplicaRequest(
                    replica=replica), timeout=10)
        controlplane.scaling.tick()  # the units are known from this tick on, not the next
        yield port
    finally:
        await controlplane.stop()


@pytest.fixture
def meshllm(controlplane, tmp_path):
    """Runs `meshllm <args>` in tmp_path, pointed at the control plane by its env variable."""
    async def run(*args: str) -> Ran:
        return await run_cli(args, tmp_path,
                             {"MESHLLM_CONTROLPLANE_ADDRESS": f"127.0.0.1:{controlplane}"},
                             drop_env=tuple(n for n in os.environ if n.startswith("MESHLLM_")))
    return run




def table_rows(table: str) -> dict[str, list[str]]:
    """The table's body rows by their first two cells (service/pool), cells stripped."""
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] and cells[0] != "Service":
            rows["/".join(filter(None, cells[:2]))] = cells
    return rows


async def test_status_shows_each_service_and_pool_with_replicas_state_and_decision(meshllm):
    table = succeeded(await meshllm("status")).out
    for column in ("Service", "Pool", "Replicas", "State", "Pinned", "In flight", "Held",
                   "Load", "Last decision", "When"):
        assert column in table, table
    rows = table_rows(table)
    assert list(rows) == ["router", "generation/m1"], table  # services first, then pools
    _, _, replicas, state, pinned, in_flight, held, load, reason, when = rows["generation/m1"]
    assert (replicas, state, pinned, in_flight, held, load) == (
        "1/1", "steady", "", "0", "0", "0.00"), table
    assert reason and when.endswith(" UTC"), table

    status = json.loads(succeeded(await meshllm("status", "--json")).out)
    units = {(unit["service"], unit["pool"]): unit for unit in status["units"]}
    assert set(units) == {("router", ""), ("generation", "m1")}
    generation = units["generation", "m1"]
    assert (generation["ready_replicas"], generation["desired_replicas"],
            generation["pinned"], generation["state"]) == (1, 1, False, "SCALING_STATE_STEADY")
    assert generation["last_decision"]["reason"].startswith(reason)  # a long one wraps


async def test_scale_pins_a_count_and_unpin_gives_the_unit_back_to_the_autoscaler(meshllm):
    assert succeeded(await meshllm("scale", "generation/m1=0")).out == (
        "Pinned generation/m1 at 0 replicas (1/0 ready, scaling down).\n")
    assert succeeded(await meshllm("scale", "generation=1")).out == (
        "Pinned generation/m1 at 1 replica (1/1 ready, steady).\n")
    pinned = table_rows(succeeded(await meshllm("status")).out)["generation/m1"]
    assert pinned[2:5] == ["1/1", "steady", "yes"], pinned

    unpinned = succeeded(await meshllm("scale", "generation", "--unpin")).out
    assert unpinned.startswith("generation/m1 is back with the autoscaler, which wants "), unpinned
    assert table_rows(succeeded(await meshllm("status")).out)["generation/m1"][4] == ""

    router = json.loads(succeeded(await meshllm("scale", "router=2", "--json")).out)["unit"]
    assert (router["service"], router["desired_replicas"], router["pinned"]) == (
        "router", 2, True)
    assert "is back with the autoscaler" in succeeded(await meshllm("scale", "router=auto")).out


async def test_refusals_are_one_line_naming_what_is_known_or_allowed(meshllm):
    unknown = one_line_error(await meshllm("scale", "nosuch=1"), 1)
    assert unknown.startswith("error: NOT_FOUND: ") and "nosuch" in unknown
    assert "m1" in unknown and "router" in unknown, unknown  # the units it does know
    too_many = one_line_error(await meshllm("scale", "generation=99"), 1)
    assert too_many.startswith("error: INVALID_ARGUMENT: ") and "99" in too_many
    assert "max_replicas (2)" in too_many, too_many
    assert not table_rows(succeeded(await meshllm("status")).out)["generation/m1"][4]

    bad = one_line_error(await meshllm("scale", "generation"), 2)
    assert "generation=2" in bad and "--unpin" in bad
    unreachable = one_line_error(await meshllm("--controlplane", "127.0.0.1:1", "status"), 1)
    assert unreachable.startswith("error: UNAVAILABLE: ")

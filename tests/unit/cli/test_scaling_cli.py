"""`meshllm scale`'s target syntax and `meshllm status`'s rows, without a control plane."""
import pytest
from google.protobuf import timestamp_pb2

from cli.errors import InputError
from cli.scaling import COLUMNS, ScaleTarget, parse_target, status_row, unit_line
from meshllm.api.controlplane.v1 import scaling_pb2


@pytest.mark.parametrize("text, unpin, target", [
    ("generation=2", False, ScaleTarget("generation", "", 2)),
    ("router=0", False, ScaleTarget("router", "", 0)),
    (" auth=1 ", False, ScaleTarget("auth", "", 1)),
    ("generation/m1=2", False, ScaleTarget("generation", "m1", 2)),
    ("generation/Qwen/Qwen2.5-0.5B-Instruct=1", False,
     ScaleTarget("generation", "Qwen/Qwen2.5-0.5B-Instruct", 1)),
    ("generation", True, ScaleTarget("generation", "", None)),
    ("generation/m1", True, ScaleTarget("generation", "m1", None)),
    ("router=auto", False, ScaleTarget("router", "", None)),
    ("router=auto", True, ScaleTarget("router", "", None)),
])
def test_a_target_names_the_unit_and_a_count_or_none_to_unpin(text, unpin, target):
    assert parse_target(text, unpin) == target


def test_a_target_becomes_a_set_scale_request_that_pins_or_unpins():
    assert parse_target("generation/m1=3").request() == scaling_pb2.SetScaleRequest(
        service="generation", pool="m1", replicas=3)
    assert parse_target("router", unpin=True).request() == scaling_pb2.SetScaleRequest(
        service="router", unpin=True)


@pytest.mark.parametrize("text, unpin, says", [
    ("generation", False, "say how many replicas generation should keep (generation=2)"),
    ("generation/m1", False, "(generation/m1=auto or --unpin)"),
    ("generation=2", True, "pass one of them"),
    ("generation=two", False, "must be a whole number of replicas, 0 or more, or 'auto' "
                              "(e.g. generation=2)"),
    ("generation=-1", False, "must be a whole number"),
    ("generation=1.5", False, "must be a whole number"),
    ("generation=", False, "must be a whole number"),
    ("generation=99999999999", False, "must be a whole number"),
    ("=2", False, "expected SERVICE=N, SERVICE/POOL=N"),
    ("generation/=2", False, "e.g. generation=2"),
    ("", False, "cannot read ''"),
    ("gen eration=2", False, "cannot read"),
])
def test_a_bad_target_is_refused_saying_which_forms_work(text, unpin, says):
    with pytest.raises(InputError) as raised:
        parse_target(text, unpin)
    assert says in str(raised.value)


def decided_at(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


STATUS = scaling_pb2.GetScalingStatusResponse(units=[
    scaling_pb2.ScaledUnit(
        service="router", desired_replicas=2, ready_replicas=1, min_replicas=1, max_replicas=4,
        pinned=True, in_flight=3, load=0.75, state=scaling_pb2.SCALING_STATE_SCALING_UP,
        last_decision=scaling_pb2.ScalingDecision(at=decided_at(1_778_414_403),
                                                  desired_replicas=2, reason="pinned at 2")),
    scaling_pb2.ScaledUnit(
        service="generation", pool="m1", desired_replicas=0, ready_replicas=0, max_replicas=2,
        held_calls=0, state=scaling_pb2.SCALING_STATE_SCALED_TO_ZERO),
    scaling_pb2.ScaledUnit(
        service="generation", pool="m2", desired_replicas=1, ready_replicas=2, max_replicas=2,
        in_flight=1, load=0.03125, state=scaling_pb2.SCALING_STATE_SCALING_DOWN),
    scaling_pb2.ScaledUnit(service="auth", desired_replicas=1, ready_replicas=1,
                           state=scaling_pb2.SCALING_STATE_STEADY),
])


def test_status_rows_show_ready_over_wanted_state_in_words_load_and_the_last_decision():
    rows = [dict(zip(COLUMNS, status_row(unit), strict=True)) for unit in STATUS.units]
    assert rows[0] == {"Service": "router", "Pool": "", "Replicas": "1/2",
                       "State": "scaling up", "Pinned": "yes", "In flight": "3", "Held": "0",
                       "Load": "0.75", "Last decision": "pinned at 2",
                       "When": "2026-05-10 12:00:03 UTC"}
    assert [(row["Pool"], row["Replicas"], row["State"], row["Pinned"], row["Load"],
             row["Last decision"], row["When"]) for row in rows[1:]] == [
        ("m1", "0/0", "scaled to zero", "", "0.00", "", ""),
        ("m2", "2/1", "scaling down", "", "0.03", "", ""),
        ("", "1/1", "steady", "", "0.00", "", "")]


def test_an_unknown_state_from_a_newer_control_plane_is_shown_as_unknown():
    assert status_row(scaling_pb2.ScaledUnit(service="x", state=99))[3] == "unknown"


def test_the_unit_after_a_scale_is_one_sentence_saying_pinned_or_autoscaled():
    assert unit_line(STATUS.units[0]) == "Pinned router at 2 replicas (1/2 ready, scaling up)."
    to_zero = scaling_pb2.ScaledUnit(service="generation", pool="m1", pinned=True,
                                     state=scaling_pb2.SCALING_STATE_SCALED_TO_ZERO)
    assert unit_line(to_zero) == ("Pinned generation/m1 at 0 replicas "
                                  "(0/0 ready, scaled to zero).")
    autoscaled = scaling_pb2.ScaledUnit(service="generation", pool="m1", desired_replicas=1,
                                        ready_replicas=1, state=scaling_pb2.SCALING_STATE_STEADY)
    assert unit_line(autoscaled) == ("generation/m1 is back with the autoscaler, which wants "
                                     "1 replica (1/1 ready, steady).")

import grpc
import pytest

from meshllm.api.controlplane.v1 import registry_pb2
from services.router.errors import RequestRejected
from services.router.model_catalog import keep_recent_pools, pools_from_replicas
from services.router.model_choice import ModelPool, choose_model

TINY = ModelPool("tiny", ready_replicas=2, max_context_tokens=2048)
BIG = ModelPool("big", ready_replicas=1, max_context_tokens=8192)


def test_named_model_is_chosen_and_the_reason_says_so():
    choice = choose_model("big", {"tiny": TINY, "big": BIG}, default_model="tiny")
    assert choice.pool is BIG
    assert "requested" in choice.reason


def test_unknown_model_is_not_found_and_lists_what_is_served():
    with pytest.raises(RequestRejected) as caught:
        choose_model("gpt-9", {"tiny": TINY, "big": BIG}, default_model="")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "gpt-9" in caught.value.message and "big, tiny" in caught.value.message


def test_no_model_requested_takes_the_default():
    choice = choose_model("", {"tiny": TINY, "big": BIG}, default_model="big")
    assert choice.pool is BIG and "default" in choice.reason


def test_no_model_requested_takes_the_only_model():
    assert choose_model("", {"tiny": TINY}, default_model="").pool is TINY


def test_no_model_requested_among_several_without_default_asks_the_caller_to_name_one():
    with pytest.raises(RequestRejected) as caught:
        choose_model("", {"tiny": TINY, "big": BIG}, default_model="")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_nothing_registered_is_unavailable_not_an_error_of_the_caller():
    with pytest.raises(RequestRejected) as caught:
        choose_model("", {}, default_model="")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_pools_group_replicas_by_model_with_the_smallest_context():
    replicas = [
        registry_pb2.Replica(replica_id="a", model="tiny", max_context_tokens=2048),
        registry_pb2.Replica(replica_id="b", model="tiny", max_context_tokens=1024),
        registry_pb2.Replica(replica_id="c", model="big", max_context_tokens=8192),
    ]
    pools = pools_from_replicas(replicas)
    assert pools["tiny"] == ModelPool("tiny", 2, 1024)
    assert pools["big"] == ModelPool("big", 1, 8192)


def test_a_pool_the_registry_stops_listing_stays_routable_for_a_while_then_goes():
    missing_since: dict[str, float] = {}
    pools = keep_recent_pools({}, {"tiny": TINY, "big": BIG}, missing_since, now=0,
                              forget_after=10)
    pools = keep_recent_pools(pools, {}, missing_since, now=3, forget_after=10)  # restarted
    assert pools["tiny"] == ModelPool("tiny", 0, 2048) and "big" in pools
    pools = keep_recent_pools(pools, {"tiny": TINY}, missing_since, now=5, forget_after=10)
    assert pools["tiny"] is TINY and "big" in pools
    pools = keep_recent_pools(pools, {"tiny": TINY}, missing_since, now=13, forget_after=10)
    assert set(pools) == {"tiny"}


def test_an_outage_longer_than_forget_after_does_not_forget_pools_at_the_first_answer():
    missing_since: dict[str, float] = {}
    pools = keep_recent_pools({}, {"tiny": TINY}, missing_since, now=0, forget_after=10)
    # The control plane was away 15 s (no answers), then answers before replicas re-register.
    pools = keep_recent_pools(pools, {}, missing_since, now=15, forget_after=10)
    assert pools == {"tiny": ModelPool("tiny", 0, 2048)}

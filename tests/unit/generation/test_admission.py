"""Admission: the cap is counted as calls are admitted, so a burst can never pass it."""
import pytest

from services.generation.admission import AdmissionGate
from services.generation.engine import ErrorCode, GenerationError


def test_a_burst_past_running_plus_waiting_is_refused_at_once_with_retry_info():
    gate = AdmissionGate(max_running=4, max_waiting=2)
    admitted = [gate.admit() for _ in range(6)]  # no engine step in between: stats would lag
    with pytest.raises(GenerationError) as caught:
        gate.admit()
    error = caught.value
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED
    assert error.reason == "REPLICA_QUEUE_FULL" and error.retry_after > 0
    assert "4 running and 2 waiting (limit 2)" in error.message
    assert gate.waiting == 2
    admitted[0].release()
    gate.admit()  # a freed slot is taken again


def test_release_is_idempotent_and_a_context_manager_frees_the_slot():
    gate = AdmissionGate(max_running=1, max_waiting=0)
    with gate.admit() as admission:
        assert gate.admitted == 1
        admission.release()
        admission.release()
        assert gate.admitted == 0
    assert gate.admitted == 0
    with gate.admit():
        with pytest.raises(GenerationError):
            gate.admit()


def test_the_engines_own_waiting_count_refuses_when_its_queue_is_full_first():
    # vLLM may run fewer than max_running (its KV cache full): its queue then fills before
    # the gate's count does.
    gate = AdmissionGate(max_running=256, max_waiting=4)
    gate.admit(reported_waiting=3)
    with pytest.raises(GenerationError):
        gate.admit(reported_waiting=4)


def test_limits_that_cannot_work_are_refused():
    with pytest.raises(ValueError):
        AdmissionGate(max_running=0, max_waiting=4)

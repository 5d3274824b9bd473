"""Refusals as the caller reads them: a google.rpc.Status in the trailers, with ErrorInfo,
BadRequest and RetryInfo details."""
import grpc
from google.rpc import code_pb2

from meshllm.errors import (
    ERROR_DOMAIN,
    STATUS_DETAILS_KEY,
    CallRefused,
    details_of,
    status_with_details,
)
from tests.status_details import unpacked


def test_a_refusal_becomes_a_status_whose_trailer_repeats_its_code_and_message():
    refusal = CallRefused(grpc.StatusCode.NOT_FOUND, "model 'x' is not served",
                          reason="MODEL_NOT_SERVED")
    status = refusal.to_status()
    assert status.code == grpc.StatusCode.NOT_FOUND
    assert status.details == "model 'x' is not served"
    (key, _), = status.trailing_metadata
    assert key == STATUS_DETAILS_KEY
    rich = details_of(status.trailing_metadata)
    assert rich.code == code_pb2.NOT_FOUND and rich.message == "model 'x' is not served"


def test_every_refusal_carries_error_info_with_its_reason_in_the_meshllm_domain():
    status = CallRefused(grpc.StatusCode.UNAVAILABLE, "no replica", reason="NO_REPLICA").to_status()
    details = unpacked(details_of(status.trailing_metadata))
    assert details["ErrorInfo"].reason == "NO_REPLICA"
    assert details["ErrorInfo"].domain == ERROR_DOMAIN == "meshllm.dev"


def test_a_refusal_without_field_or_retry_after_carries_only_error_info():
    status = status_with_details(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL_ERROR")
    assert set(unpacked(details_of(status.trailing_metadata))) == {"ErrorInfo"}


def test_a_refusal_naming_a_field_carries_a_bad_request_violation_of_that_field():
    status = status_with_details(grpc.StatusCode.INVALID_ARGUMENT,
                                 "sampling.max_tokens must be at least 1, got 0", "INVALID_INPUT",
                                 field="sampling.max_tokens")
    details = unpacked(details_of(status.trailing_metadata))
    (violation,) = details["BadRequest"].field_violations
    assert violation.field == "sampling.max_tokens"
    assert violation.description == "sampling.max_tokens must be at least 1, got 0"
    assert details["ErrorInfo"].reason == "INVALID_INPUT"
    assert "RetryInfo" not in details


def test_a_refusal_with_retry_after_carries_retry_info_with_that_delay():
    refusal = CallRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, "this replica is full",
                          reason="REPLICA_QUEUE_FULL", retry_after=1.5)
    details = unpacked(details_of(refusal.to_status().trailing_metadata))
    assert details["RetryInfo"].retry_delay.ToMilliseconds() == 1500
    assert details["ErrorInfo"].reason == "REPLICA_QUEUE_FULL"
    assert "BadRequest" not in details


def test_a_retry_after_of_zero_still_says_retry_now():
    refusal = CallRefused(grpc.StatusCode.UNAVAILABLE, "truncated", reason="STREAM_TRUNCATED",
                          retry_after=0.0)
    details = unpacked(details_of(refusal.to_status().trailing_metadata))
    assert details["RetryInfo"].retry_delay.ToNanoseconds() == 0


def test_details_of_finds_the_status_among_other_trailers_and_none_without_it():
    status = status_with_details(grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_INPUT")
    trailers = (("x-request-id", "req-1"), *status.trailing_metadata, ("other-bin", b"\x00"))
    assert details_of(trailers).message == "bad"
    assert details_of((("x-request-id", "req-1"),)) is None
    assert details_of(None) is None

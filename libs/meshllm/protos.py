"""Small conversions and names every service uses with the protos."""
from google.protobuf.duration_pb2 import Duration

MODEL_HEADER = "x-meshllm-model"
"""Metadata that names a generation call's model; Envoy's mesh listener routes on it."""


def duration(seconds: float) -> Duration:
    """A Duration of `seconds`, never negative (clocks of two processes may disagree a little)."""
    value = Duration()
    value.FromNanoseconds(round(max(seconds, 0.0) * 1e9))
    return value

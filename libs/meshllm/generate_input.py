"""Checks on a generate request's input and sampling, shared by the router and generation.

Both speak the same `meshllm.inference.v1` Conversation and SamplingParams, so one set of
rules and one wording of the messages serves every hop."""
from meshllm.api.inference.v1 import inference_pb2

MAX_STOP_SEQUENCES = 8
MAX_STOP_LENGTH = 256
MAX_LABELS = 64
MAX_LABEL_CHARS = 128


class InvalidInput(ValueError):
    """A request that can never succeed as sent; the message says what to change and
    `field` names the request field at fault (a google.rpc.BadRequest field violation)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def check_input(kind: str | None, chat: inference_pb2.Conversation, prompt: str) -> None:
    """`kind` is the request's `input` oneof (WhichOneof): "chat", "prompt" or None."""
    if kind is None:
        raise InvalidInput("the request has no input: set 'chat.messages' (at least one message) "
                           "or 'prompt'", "input")
    if kind == "prompt":
        if not prompt:
            raise InvalidInput("'prompt' is empty: send some text, or use 'chat.messages'",
                               "prompt")
        return
    if not chat.messages:
        raise InvalidInput("'chat.messages' is empty: send at least one message", "chat.messages")
    for index, message in enumerate(chat.messages):
        if message.role == inference_pb2.ROLE_UNSPECIFIED:
            raise InvalidInput(f"chat.messages[{index}].role is not set: use ROLE_SYSTEM, "
                               "ROLE_USER or ROLE_ASSISTANT", f"chat.messages[{index}].role")
        if message.role not in inference_pb2.Role.values():
            raise InvalidInput(f"chat.messages[{index}].role {message.role} is not a known role",
                               f"chat.messages[{index}].role")


def check_sampling(sampling: inference_pb2.SamplingParams) -> None:
    """Rules that hold whatever the model; `check_fits_context` adds the model's limit."""
    if sampling.max_tokens < 1:
        raise InvalidInput(f"sampling.max_tokens must be at least 1, got {sampling.max_tokens}",
                           "sampling.max_tokens")
    if sampling.HasField("temperature") and not 0 <= sampling.temperature <= 100:
        raise InvalidInput(f"sampling.temperature must be between 0 and 100, got "
                           f"{sampling.temperature}",
                           "sampling.temperature")
    if sampling.HasField("top_p") and not 0 < sampling.top_p <= 1:
        raise InvalidInput(f"sampling.top_p must be in (0, 1], got {sampling.top_p}",
                           "sampling.top_p")
    if len(sampling.stop) > MAX_STOP_SEQUENCES:
        raise InvalidInput(f"at most {MAX_STOP_SEQUENCES} stop strings, got {len(sampling.stop)}",
                           "sampling.stop")
    for index, stop in enumerate(sampling.stop):
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise InvalidInput(f"sampling.stop[{index}] must be 1 to {MAX_STOP_LENGTH} characters",
                               f"sampling.stop[{index}]")


def check_fits_context(max_tokens: int, max_context_tokens: int) -> None:
    """max_tokens alone against the model's context; the engine, which knows the prompt's
    length, checks prompt plus completion."""
    if max_tokens >= max_context_tokens:
        raise InvalidInput(
            f"sampling.max_tokens {max_tokens} does not fit the model's context of "
            f"{max_context_tokens} tokens (prompt included): ask for at most "
            f"{max_context_tokens - 1}", "sampling.max_tokens")


def labels_are_storable(labels) -> bool:
    return len(labels) <= MAX_LABELS and all(
        0 < len(key) <= MAX_LABEL_CHARS and len(value) <= MAX_LABEL_CHARS
        and key.isprintable() and value.isprintable() for key, value in labels.items())


def check_labels(labels) -> None:
    """Labels end up in the usage ledger (and a database's text column): bounded, printable."""
    if not labels_are_storable(labels):
        raise InvalidInput(
            f"labels: at most {MAX_LABELS}, each key 1 to {MAX_LABEL_CHARS} and each value 0 to "
            f"{MAX_LABEL_CHARS} printable characters", "labels")

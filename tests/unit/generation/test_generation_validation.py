"""Request validation: every rejection names what to change, with the numbers."""
import time

import pytest

from services.generation.engine import (
    ChatTurn,
    ErrorCode,
    GenerationClock,
    GenerationError,
    GenerationRequest,
    check_context,
    validate_request,
)

MODEL, CONTEXT = "tiny-llama", 2048


def chat(*turns: tuple[str, str], **fields) -> GenerationRequest:
    messages = tuple(ChatTurn(role, content) for role, content in turns)
    return GenerationRequest(request_id="r", messages=messages, **fields)


def rejection(request: GenerationRequest) -> GenerationError:
    with pytest.raises(GenerationError) as caught:
        validate_request(request, MODEL)
    return caught.value


@pytest.mark.parametrize("model", ["", MODEL])
def test_no_model_or_the_served_one_is_accepted(model):
    assert validate_request(chat(("user", "hi"), max_tokens=8, model=model), MODEL) is None


def test_another_model_is_not_found_and_names_the_served_one():
    error = rejection(chat(("user", "hi"), max_tokens=4, model="llama-70b"))
    assert error.code is ErrorCode.NOT_FOUND
    assert "llama-70b" in error.message and MODEL in error.message


def test_prompt_and_completion_that_exactly_fill_the_context_pass_and_one_more_token_does_not():
    assert check_context(prompt_tokens=2000, max_tokens=48, max_context_tokens=CONTEXT) is None
    with pytest.raises(GenerationError):
        check_context(prompt_tokens=2000, max_tokens=49, max_context_tokens=CONTEXT)


def test_max_tokens_filling_the_whole_context_says_how_many_fit_beside_the_prompt():
    with pytest.raises(GenerationError) as caught:
        check_context(prompt_tokens=1, max_tokens=CONTEXT, max_context_tokens=CONTEXT)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert f"at most {CONTEXT - 1}" in caught.value.message


def test_prompt_plus_max_tokens_beyond_the_context_says_the_numbers():
    with pytest.raises(GenerationError) as caught:
        check_context(prompt_tokens=2000, max_tokens=100, max_context_tokens=CONTEXT)
    message = caught.value.message
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    for number in ("2000", "100", "2100", "2048", "48"):
        assert number in message


def test_a_prompt_longer_than_the_context_says_to_shorten_it():
    with pytest.raises(GenerationError) as caught:
        check_context(prompt_tokens=5000, max_tokens=1, max_context_tokens=CONTEXT)
    assert "5000" in caught.value.message and "shorten the prompt" in caught.value.message


def test_clock_counts_queueing_until_scheduled_and_first_token_from_arrival():
    arrived = time.monotonic() - 1.0
    clock = GenerationClock(arrival=arrived)
    clock.mark_scheduled(at=arrived + 0.25)
    clock.mark_token()
    timings = clock.timings()
    assert timings.queued == pytest.approx(0.25)
    assert 1.0 <= timings.time_to_first_token <= timings.total < 2.0


def test_clock_never_reports_negative_queueing_or_a_later_first_token():
    arrived = time.monotonic() - 1.0
    clock = GenerationClock(arrival=arrived)
    clock.mark_scheduled(at=arrived - 5)  # a scheduler timestamp from before this replica saw it
    clock.mark_token()
    first = clock.timings().time_to_first_token
    clock.mark_token()  # later tokens do not move the first one
    assert clock.timings().queued == 0
    assert clock.timings().time_to_first_token == first


def test_clock_without_a_scheduler_mark_counts_queueing_until_the_first_token():
    clock = GenerationClock(arrival=time.monotonic() - 1.0)
    clock.mark_token()
    timings = clock.timings()
    assert timings.queued == timings.time_to_first_token >= 1.0

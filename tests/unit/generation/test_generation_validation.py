"""Request validation: every rejection names what to change, with the numbers."""
import pytest

from services.generation.engine import (
    ChatTurn,
    EngineLoad,
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
        validate_request(request, MODEL, CONTEXT)
    return caught.value


def test_a_valid_chat_and_a_valid_prompt_pass():
    validate_request(chat(("user", "hi"), max_tokens=8), MODEL, CONTEXT)
    validate_request(GenerationRequest("r", prompt="hi", max_tokens=8, model=MODEL), MODEL, CONTEXT)


def test_max_tokens_filling_the_whole_context_is_invalid():
    error = rejection(chat(("user", "hi"), max_tokens=CONTEXT))
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert str(CONTEXT) in error.message and str(CONTEXT - 1) in error.message


def test_another_model_is_not_found_and_names_the_served_one():
    error = rejection(chat(("user", "hi"), max_tokens=4, model="llama-70b"))
    assert error.code is ErrorCode.NOT_FOUND
    assert "llama-70b" in error.message and MODEL in error.message


def test_prompt_and_completion_that_fit_the_context_pass():
    check_context(prompt_tokens=2000, max_tokens=48, max_context_tokens=CONTEXT)


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


def test_clock_timings_are_ordered():
    clock = GenerationClock()
    clock.mark_token()
    timings = clock.timings()
    assert 0 <= timings.queued <= timings.time_to_first_token <= timings.total

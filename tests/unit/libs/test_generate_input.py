import pytest

from meshllm.api.inference.v1 import inference_pb2
from meshllm.generate_input import InvalidInput, check_input, check_sampling


def sampling(**fields):
    return inference_pb2.SamplingParams(**fields)


def test_max_tokens_that_fill_the_whole_context_are_refused_with_the_numbers():
    with pytest.raises(InvalidInput) as caught:
        check_sampling(sampling(max_tokens=4096), max_context_tokens=2048)
    assert "4096" in str(caught.value) and "2048" in str(caught.value)


def test_max_tokens_within_context_pass():
    check_sampling(sampling(max_tokens=16, temperature=0, top_p=1), max_context_tokens=2048)


def test_unknown_context_skips_the_context_check():
    check_sampling(sampling(max_tokens=10**6), max_context_tokens=0)


def test_too_many_stop_strings_are_refused():
    with pytest.raises(InvalidInput, match="stop"):
        check_sampling(sampling(max_tokens=4, stop=[str(i) for i in range(9)]), 0)


def test_empty_prompt_is_refused():
    with pytest.raises(InvalidInput, match="prompt"):
        check_input("prompt", inference_pb2.Conversation(), "")


def test_a_conversation_with_roles_passes():
    chat = inference_pb2.Conversation(messages=[
        inference_pb2.ChatMessage(role=inference_pb2.ROLE_SYSTEM, content="be brief"),
        inference_pb2.ChatMessage(role=inference_pb2.ROLE_USER, content="hi")])
    check_input("chat", chat, "")

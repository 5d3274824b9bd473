import pytest

from meshllm.api.inference.v1 import inference_pb2
from meshllm.generate_input import InvalidInput, check_fits_context, check_input, check_sampling


def sampling(**fields):
    return inference_pb2.SamplingParams(**fields)


def test_max_tokens_that_fill_the_whole_context_are_refused_with_the_numbers():
    with pytest.raises(InvalidInput) as caught:
        check_fits_context(4096, max_context_tokens=2048)
    assert "4096" in str(caught.value) and "2048" in str(caught.value)


def test_max_tokens_within_context_pass():
    check_sampling(sampling(max_tokens=16, temperature=0, top_p=1))
    check_fits_context(16, max_context_tokens=2048)


def test_too_many_stop_strings_are_refused():
    with pytest.raises(InvalidInput, match="stop"):
        check_sampling(sampling(max_tokens=4, stop=[str(i) for i in range(9)]))


def test_empty_prompt_is_refused():
    with pytest.raises(InvalidInput, match="prompt"):
        check_input("prompt", inference_pb2.Conversation(), "")


def test_a_conversation_with_roles_passes():
    chat = inference_pb2.Conversation(messages=[
        inference_pb2.ChatMessage(role=inference_pb2.ROLE_SYSTEM, content="be brief"),
        inference_pb2.ChatMessage(role=inference_pb2.ROLE_USER, content="hi")])
    check_input("chat", chat, "")


@pytest.mark.parametrize("fields, words", [
    ({"max_tokens": 4, "temperature": float("nan")}, "temperature"),
    ({"max_tokens": 4, "temperature": -0.1}, "temperature"),
    ({"max_tokens": 4, "top_p": 1.5}, "top_p"),
    ({"max_tokens": 4, "top_p": -1}, "top_p"),
    ({"max_tokens": 0}, "got 0"),
])
def test_sampling_out_of_range_is_refused_with_the_value(fields, words):
    with pytest.raises(InvalidInput, match=words):
        check_sampling(sampling(**fields))


def test_a_message_without_a_role_is_named_by_index():
    chat = inference_pb2.Conversation(messages=[
        inference_pb2.ChatMessage(role=inference_pb2.ROLE_USER, content="a"),
        inference_pb2.ChatMessage(content="b")])
    with pytest.raises(InvalidInput, match=r"chat.messages\[1\].role"):
        check_input("chat", chat, "")

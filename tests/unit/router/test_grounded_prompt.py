"""Passages placed in a prompt: numbered, within the budget, best first."""
from meshllm.api.inference.v1 import inference_pb2 as inference
from meshllm.api.retrieval.v1 import retrieval_pb2 as r
from services.router.grounded_prompt import (INSTRUCTION, estimated_tokens, place_passages,
                                             question_of, text_tokens)

PASSAGES = [r.Passage(document_id=f"doc-{n}", text=f"Passage number {n}. " * 20)
            for n in range(1, 4)]


def chat(*messages) -> inference.GenerateRequest:
    return inference.GenerateRequest(chat=inference.Conversation(messages=[
        inference.ChatMessage(role=role, content=content) for role, content in messages]))


def test_a_raw_prompt_gets_the_numbered_passages_before_it():
    request = inference.GenerateRequest(prompt="What does passage two say?")
    placed = place_passages(request, PASSAGES, budget_tokens=10_000)
    assert placed == PASSAGES
    assert request.prompt.startswith(INSTRUCTION)
    assert request.prompt.endswith("\n\nWhat does passage two say?")
    for number, passage in enumerate(PASSAGES, 1):
        assert f"[{number}] (document {passage.document_id})\n{passage.text}" in request.prompt


def test_a_conversation_gets_them_in_its_system_message():
    request = chat((inference.ROLE_SYSTEM, "Be brief."), (inference.ROLE_USER, "Hi"))
    place_passages(request, PASSAGES[:1], budget_tokens=10_000)
    system, user = request.chat.messages
    assert system.content.startswith("Be brief.\n\n" + INSTRUCTION)
    assert user.content == "Hi"
    bare = chat((inference.ROLE_USER, "Hi"))
    place_passages(bare, PASSAGES[:1], budget_tokens=10_000)
    assert [m.role for m in bare.chat.messages] == [inference.ROLE_SYSTEM, inference.ROLE_USER]


def test_passages_past_the_budget_are_left_out_with_every_one_after_them():
    one_passage = text_tokens(INSTRUCTION) + text_tokens(f"[1] (document doc-1)\n{PASSAGES[0].text}") + 1
    request = inference.GenerateRequest(prompt="q")
    assert place_passages(request, PASSAGES, budget_tokens=one_passage) == PASSAGES[:1]
    untouched = inference.GenerateRequest(prompt="q")
    assert place_passages(untouched, PASSAGES, budget_tokens=one_passage - 1) == []
    assert untouched.prompt == "q"


def test_the_estimate_never_counts_fewer_tokens_than_a_byte_per_three():
    text = "naïve 日本語 text"
    assert text_tokens(text) > len(text.encode()) / 3
    assert estimated_tokens(chat((inference.ROLE_USER, text))) > text_tokens(text)


def test_the_question_is_the_last_user_message_or_the_prompt():
    assert question_of(chat((inference.ROLE_USER, "first"), (inference.ROLE_ASSISTANT, "a"),
                            (inference.ROLE_USER, "second"))) == "second"
    assert question_of(inference.GenerateRequest(prompt="p")) == "p"

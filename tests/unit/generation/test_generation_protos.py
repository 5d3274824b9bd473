"""Mapping between the GenerationService protos and the engine's plain types."""
from meshllm.api.generation.v1 import generation_pb2
from meshllm.api.inference.v1 import inference_pb2
from services.generation.engine import ChatTurn, Delta, Finished, FinishReason, Started, Timings
from services.generation.server import to_request, to_response


def test_a_chat_request_maps_roles_sampling_and_model():
    proto = generation_pb2.GenerateRequest(
        request_id="abc",
        chat=inference_pb2.Conversation(messages=[
            inference_pb2.ChatMessage(role=inference_pb2.ROLE_SYSTEM, content="be brief"),
            inference_pb2.ChatMessage(role=inference_pb2.ROLE_USER, content="hi"),
            inference_pb2.ChatMessage(role=inference_pb2.ROLE_UNSPECIFIED, content="?"),
        ]),
        sampling=inference_pb2.SamplingParams(max_tokens=7, temperature=0.0, seed=3, stop=["x"]),
        model="tiny-llama",
    )
    request = to_request(proto, fallback_id="unused")
    assert request.request_id == "abc"
    assert request.messages == (
        ChatTurn("system", "be brief"), ChatTurn("user", "hi"), ChatTurn("", "?"),
    )
    assert request.prompt is None
    assert (request.max_tokens, request.temperature, request.top_p, request.seed) == (7, 0.0, None, 3)
    assert request.stop == ("x",) and request.model == "tiny-llama"


def test_a_prompt_request_without_id_takes_the_fallback_id():
    proto = generation_pb2.GenerateRequest(prompt="hello", sampling={"max_tokens": 2})
    request = to_request(proto, fallback_id="from-metadata")
    assert request.request_id == "from-metadata"
    assert request.prompt == "hello" and request.messages is None


def test_steps_map_to_started_delta_and_finished_events():
    started = to_response(Started(prompt_tokens=12), "replica-1", "tiny-llama").started
    assert (started.replica_id, started.model, started.prompt_tokens) == ("replica-1", "tiny-llama", 12)

    delta = to_response(Delta(text="ab", token_ids=(4, 5)), "replica-1", "m").delta
    assert delta.text == "ab" and list(delta.token_ids) == [4, 5]

    finished = to_response(
        Finished(FinishReason.LENGTH, 12, 8, Timings(queued=0.001, time_to_first_token=0.25, total=1.5)),
        "replica-1", "m",
    ).finished
    assert finished.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert (finished.usage.prompt_tokens, finished.usage.completion_tokens) == (12, 8)
    assert finished.timings.time_to_first_token.ToMilliseconds() == 250
    assert finished.timings.total.ToMilliseconds() == 1500
    assert finished.timings.queued.ToMicroseconds() == 1000

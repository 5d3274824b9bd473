"""Small helpers the e2e tests share: channels to the mesh and collected streams."""
import grpc

from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc


def chat_request(text: str = "Hello", max_tokens: int = 8, **fields) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        chat={"messages": [{"role": inference_pb2.ROLE_USER, "content": text}]},
        sampling={"max_tokens": max_tokens, "temperature": 0.0}, **fields)


def public_stub(channel: grpc.aio.Channel) -> inference_pb2_grpc.InferenceServiceStub:
    return inference_pb2_grpc.InferenceServiceStub(channel)


async def generate(stub, request, timeout: float = 60) -> list[inference_pb2.GenerateResponse]:
    return [event async for event in stub.Generate(request, timeout=timeout)]


def kinds(events) -> list[str]:
    return [event.WhichOneof("event") for event in events]

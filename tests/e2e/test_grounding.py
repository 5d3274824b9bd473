"""A grounded generation on the real engine, through Envoy: a collection loaded with the dev
tenant's key, then a Generate that names it streams the context event citing passages that
exist, then vLLM's tokens. A retrieval replica joins the session's mesh for this module (named
to run before test_resilience.py, which ends by killing the control plane: a replica started
after that could not register)."""
import pytest

from meshllm.api.inference.v1 import inference_pb2
from meshllm.api.retrieval.v1 import retrieval_pb2 as r, retrieval_pb2_grpc
from meshllm.api_key import keyed_channel
from tests.e2e.streams import chat_request, kinds, public_stub

COLLECTION = "e2e-handbook"
DOCUMENTS = [
    r.Document(id="returns", text="Returns are free within 30 days of delivery. Refunds reach "
               "the original card within ten business days.", metadata={"topic": "billing"}),
    r.Document(id="warranty", text="Every kettle has a two year warranty covering the heating "
               "element and the thermostat.", metadata={"topic": "products"}),
]


@pytest.fixture(scope="module")
async def retrieval_replica(mesh):
    process = await mesh.add_retrieval_replica()
    await mesh.wait_until_routed([process])
    yield process
    await mesh.supervisor.stop(process)


async def test_a_grounded_vllm_call_streams_its_citations_then_tokens(mesh, retrieval_replica):
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        await retrieval.CreateCollection(r.CreateCollectionRequest(name=COLLECTION), timeout=30)

        async def load():
            yield r.UpsertDocumentsRequest(collection=COLLECTION, documents=DOCUMENTS)
        await retrieval.UpsertDocuments(load(), timeout=60)

        question = "How long do refunds take?"
        bare = [event async for event in public_stub(channel).Generate(
            chat_request(question, max_tokens=4), timeout=120)]
        request = chat_request(question, max_tokens=16, retrieval=inference_pb2.RetrievalOptions(
            collection=COLLECTION, top_k=1))
        events = [event async for event in public_stub(channel).Generate(request, timeout=120)]
        assert kinds(events)[:2] == ["started", "context"]
        assert "delta" in kinds(events)[2:] and kinds(events)[-1] == "finished"
        (citation,) = events[1].context.citations
        assert citation.passage.document_id == "returns"
        # The instruction and the passage went into the prompt the engine saw.
        assert (events[-1].finished.usage.prompt_tokens
                > bare[-1].finished.usage.prompt_tokens + 30)
        found = [passage async for response in retrieval.Search(
            r.SearchRequest(collection=COLLECTION, query="refunds", document_ids=["returns"]),
            timeout=30) for passage in response.passages]
        assert citation.passage.chunk_id in {passage.chunk_id for passage in found}

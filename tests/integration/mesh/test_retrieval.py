"""Retrieval through the whole mesh: tenants load collections on Envoy's public listener with
their own keys, and a Generate that names a collection streams a context event citing the
passages, then the tokens. The sim engine echoes the prompt it received, so the tests see
what the model was given."""
import grpc
import pytest

from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.inference.v1 import inference_pb2 as inference
from meshllm.api.retrieval.v1 import retrieval_pb2 as r, retrieval_pb2_grpc
from meshllm.api_key import bearer
from meshllm.tenancy import POLICY_HEADER, TENANT_HEADER
from tests.integration.mesh.tenant_client import reason, refusal

Code = grpc.StatusCode
MODEL = "sim-echo"
RETRIEVING = auth_pb2.Policy(allowed_collections=["*"])
HANDBOOK = [
    r.Document(id="password", text="To reset your password open Settings then Security and "
               "press Reset. A link arrives by email.", metadata={"team": "support"}),
    r.Document(id="shipping", text="Parcels leave the Rotterdam warehouse within two days.",
               metadata={"team": "sales"}),
]


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", model=MODEL, retrieval_replicas=1,
        workdir=tmp_path_factory.mktemp("mesh"),
        generation_env=(("MESHLLM_GENERATION_SIM_ECHO_PROMPT", "true"),
                        ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.001"))))
    async with mesh.running(generation_replicas=1):
        yield mesh


@pytest.fixture(scope="module")
def retrieval(client):
    return retrieval_pb2_grpc.RetrievalServiceStub(client.channel)


async def tenant_with_handbook(client, retrieval, policy=RETRIEVING) -> tuple[str, str]:
    tenant, key, _ = await client.new_tenant(policy)
    await retrieval.CreateCollection(r.CreateCollectionRequest(name="handbook"),
                                     metadata=bearer(key), timeout=10)

    async def load():
        yield r.UpsertDocumentsRequest(collection="handbook", documents=HANDBOOK)
    await retrieval.UpsertDocuments(load(), metadata=bearer(key), timeout=60)
    return tenant, key


def grounded(question: str, collection: str = "handbook",
             **options) -> inference.GenerateRequest:
    return inference.GenerateRequest(
        prompt=question, model=MODEL, sampling={"max_tokens": 400},
        retrieval=inference.RetrievalOptions(collection=collection, **options))


async def events_of(client, key: str, request, metadata=()) -> list[inference.GenerateResponse]:
    return [event async for event in client.inference.Generate(
        request, metadata=(*bearer(key), *metadata), timeout=60)]


def echoed(events) -> str:
    return "".join(event.delta.text for event in events if event.HasField("delta"))


async def test_a_grounded_call_cites_its_passages_before_the_first_token(client, retrieval):
    _, key = await tenant_with_handbook(client, retrieval)
    events = await events_of(client, key, grounded("How do I reset my password?", top_k=1))
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[:2] == ["started", "context"] and kinds[2] == "delta"
    assert kinds[-1] == "finished"
    context = events[1].context
    assert context.collection == "handbook" and not context.unavailable
    (citation,) = context.citations
    assert (citation.number, citation.passage.document_id) == (1, "password")
    assert citation.passage.metadata == {"team": "support"}
    prompt = echoed(events)  # what the model was given (repeated up to max_tokens)
    assert "[1]" in prompt and "Reset" in prompt and "Rotterdam" not in prompt
    found = [passage async for response in retrieval.Search(
        r.SearchRequest(collection="handbook", query="password",
                        document_ids=[citation.passage.document_id], top_k=10),
        metadata=bearer(key), timeout=10) for passage in response.passages]
    assert citation.passage.chunk_id in {passage.chunk_id for passage in found}


async def test_headers_forged_past_envoy_reach_only_the_callers_own_collections(client,
                                                                               retrieval):
    victim, _ = await tenant_with_handbook(client, retrieval)
    _, key, _ = await client.new_tenant(RETRIEVING)
    forged = ((TENANT_HEADER, victim), (POLICY_HEADER, RETRIEVING.SerializeToString()))
    error = await refusal(retrieval.DescribeCollection(
        r.DescribeCollectionRequest(name="handbook"), metadata=(*bearer(key), *forged),
        timeout=10))
    assert error.code() == Code.NOT_FOUND
    error = await refusal(anext(aiter(client.inference.Generate(
        grounded("password"), metadata=(*bearer(key), *forged), timeout=30))))
    assert error.code() == Code.NOT_FOUND and reason(error) == "COLLECTION_NOT_FOUND"


async def test_a_collection_the_policy_does_not_allow_is_refused(client, retrieval):
    _, key = await tenant_with_handbook(client, retrieval)
    _, narrow_key, _ = await client.new_tenant(auth_pb2.Policy(allowed_collections=["faq"]))
    error = await refusal(anext(aiter(client.inference.Generate(
        grounded("password"), metadata=bearer(narrow_key), timeout=30))))
    assert error.code() == Code.PERMISSION_DENIED
    assert reason(error) == "COLLECTION_NOT_ALLOWED"


async def test_retrieval_down_fails_the_call_unless_it_may_go_on_without_context(mesh, client,
                                                                                 retrieval):
    _, key = await tenant_with_handbook(client, retrieval)
    (replica,) = mesh.retrieval.values()
    await mesh.supervisor.stop(replica)
    try:
        error = await refusal(anext(aiter(client.inference.Generate(
            grounded("password"), metadata=bearer(key), timeout=30))))
        assert error.code() == Code.UNAVAILABLE and reason(error) == "RETRIEVAL_UNAVAILABLE"
        events = await events_of(client, key, grounded("password", allow_without_context=True))
        assert [event.WhichOneof("event") for event in events[:2]] == ["started", "context"]
        assert events[1].context.unavailable and not events[1].context.citations
        assert set(echoed(events).split()) == {"password"}  # the prompt alone, repeated
    finally:
        await mesh.supervisor.start(replica, timeout=120)
        await mesh.wait_until_routed([replica])

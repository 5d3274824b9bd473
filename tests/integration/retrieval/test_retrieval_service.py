"""The RetrievalService on each store, called as the router and clients call it (with the
headers Envoy asserts): collections, bulk loads and their per-document results, search with the
real embedding model, bad input, tenant isolation, restarts and interrupted loads."""
import asyncio

import grpc
import pytest

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.retrieval.v1 import retrieval_pb2 as r
from services.retrieval.chunking import chunk_spans
from services.retrieval.validation import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS
from tests.integration.retrieval.retrieval_server import running_retrieval
from tests.status_details import error_details, violated_fields

Code = grpc.StatusCode
STORES = ["lance", "milvus"]
HANDBOOK = [
    r.Document(id="password", text="To reset your password, open Settings, choose Security and "
               "click Reset password. A link arrives by email within a minute.",
               metadata={"team": "support", "lang": "en"}),
    r.Document(id="shipping", text="Orders leave our warehouse in Rotterdam within two business "
               "days. Tracking numbers are sent once the parcel is handed to the carrier.",
               metadata={"team": "sales", "lang": "en"}),
    r.Document(id="refunds", text="Refunds go back to the card used for the purchase, five to "
               "ten days after we receive the returned item.",
               metadata={"team": "sales", "lang": "en"}),
]


@pytest.fixture(params=STORES)
async def retrieval(request, tmp_path, encoder):
    async with running_retrieval(request.param, tmp_path, encoder) as replica:
        yield replica


def load(collection: str, documents, per_request: int = 50):
    async def requests():
        for first in range(0, len(documents), per_request):
            yield r.UpsertDocumentsRequest(collection=collection if first == 0 else "",
                                           documents=documents[first:first + per_request])
    return requests()


async def search(tenant, collection: str = "docs", **fields) -> list[r.Passage]:
    return [passage async for response in tenant.Search(
        r.SearchRequest(collection=collection, **fields), timeout=30)
        for passage in response.passages]


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        result = call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    return raised.value


async def new_collection(tenant, name: str = "docs",
                         documents=HANDBOOK) -> r.UpsertDocumentsResponse:
    await tenant.CreateCollection(r.CreateCollectionRequest(name=name), timeout=10)
    return await tenant.UpsertDocuments(load(name, documents), timeout=60)


async def test_a_collection_is_created_described_listed_and_deleted(retrieval):
    acme = retrieval.as_tenant("acme")
    created = await acme.CreateCollection(r.CreateCollectionRequest(
        name="docs", description="the handbook", chunking=r.ChunkingOptions(max_tokens=64)))
    assert created.collection.chunking == r.ChunkingOptions(max_tokens=64, overlap_tokens=16)
    assert (created.collection.dimension, created.collection.embedding_model) == (
        384, "all-MiniLM-L6-v2")
    error = await refusal(acme.CreateCollection(r.CreateCollectionRequest(name="docs")))
    assert error.code() == Code.ALREADY_EXISTS
    await acme.UpsertDocuments(load("docs", HANDBOOK))
    described = await acme.DescribeCollection(r.DescribeCollectionRequest(name="docs"))
    assert (described.collection.document_count, described.collection.chunk_count) == (3, 3)
    listed = await acme.ListCollections(r.ListCollectionsRequest())
    assert [c.name for c in listed.collections] == ["docs"]
    await acme.DeleteCollection(r.DeleteCollectionRequest(name="docs"))
    error = await refusal(acme.DescribeCollection(r.DescribeCollectionRequest(name="docs")))
    assert error.code() == Code.NOT_FOUND
    assert not (await acme.ListCollections(r.ListCollectionsRequest())).collections


async def test_each_document_gets_a_result_and_an_unchanged_one_is_not_written_again(retrieval):
    acme = retrieval.as_tenant("acme")
    first = await new_collection(acme)
    assert [(d.document_id, d.outcome) for d in first.results] == [
        (d.id, r.DOCUMENT_OUTCOME_CREATED) for d in HANDBOOK]
    assert first.chunks_written == 3
    changed = r.Document(id="refunds", text="Refunds take two weeks.")
    again = await acme.UpsertDocuments(load("docs", [*HANDBOOK[:2], changed]))
    assert [d.outcome for d in again.results] == [
        r.DOCUMENT_OUTCOME_UNCHANGED, r.DOCUMENT_OUTCOME_UNCHANGED, r.DOCUMENT_OUTCOME_UPDATED]
    assert again.chunks_written == 1
    passages = await search(acme, query="how long do refunds take", document_ids=["refunds"])
    assert [p.text for p in passages] == ["Refunds take two weeks."]


async def test_a_long_document_is_chunked_with_offsets_into_its_text(retrieval):
    acme = retrieval.as_tenant("acme")
    text = " ".join(f"Paragraph {i} is about the subject numbered {i}." for i in range(120))
    response = await new_collection(acme, documents=[r.Document(id="long", text=text)])
    chunks = response.results[0].chunk_count
    assert chunks > 5
    passages = await search(acme, query="subject", mode=r.SEARCH_MODE_KEYWORD, top_k=100)
    assert len(passages) == chunks
    for passage in passages:
        assert text[passage.start_offset:passage.end_offset] == passage.text
    ordered = sorted(passages, key=lambda p: p.chunk_index)
    assert ordered[0].start_offset == 0 and ordered[-1].end_offset == len(text)
    for before, after in zip(ordered, ordered[1:]):
        assert after.start_offset < before.end_offset  # they overlap


async def test_search_finds_by_meaning_by_keyword_and_both(retrieval):
    acme = retrieval.as_tenant("acme")
    await new_collection(acme)
    dense = await search(acme, query="I forgot my login credentials", mode=r.SEARCH_MODE_DENSE)
    assert dense[0].document_id == "password" and 0 < dense[0].score <= 1
    keyword = await search(acme, query="Rotterdam", mode=r.SEARCH_MODE_KEYWORD)
    assert [p.document_id for p in keyword] == ["shipping"] and keyword[0].score > 0
    hybrid = await search(acme, query="when does my money come back to the card", top_k=2)
    assert hybrid[0].document_id == "refunds"
    assert hybrid[0].metadata == {"team": "sales", "lang": "en"}
    only_support = await search(acme, query="Rotterdam",
                                filters=[r.MetadataFilter(key="team", any_of=["support"])])
    assert {p.document_id for p in only_support} == {"password"}


async def test_a_query_embedding_from_the_caller_is_used(retrieval, encoder):
    acme = retrieval.as_tenant("acme")
    await new_collection(acme)
    embedding = encoder.embed(["parcel tracking number"])[0]
    passages = await search(acme, query_embedding=embedding.tolist(), mode=r.SEARCH_MODE_DENSE,
                            top_k=1)
    assert passages[0].document_id == "shipping"


@pytest.mark.parametrize("fields, code, field", [
    ({"collection": "nope", "query": "x"}, Code.NOT_FOUND, "collection"),
    ({"collection": "bad name!", "query": "x"}, Code.INVALID_ARGUMENT, "collection"),
    ({"query_embedding": [0.1] * 383, "query": "x"}, Code.INVALID_ARGUMENT, "query_embedding"),
    ({"query": ""}, Code.INVALID_ARGUMENT, "query"),
    ({"query": "x" * 5000}, Code.INVALID_ARGUMENT, "query"),
    ({"query": "x", "top_k": 101}, Code.INVALID_ARGUMENT, "top_k"),
    ({"query": "x", "mode": 9}, Code.INVALID_ARGUMENT, "mode"),
    ({"query": "x", "filters": [r.MetadataFilter(key="team")]}, Code.INVALID_ARGUMENT,
     "filters.any_of"),
    ({"query": "x", "filters": [r.MetadataFilter(key="a b", any_of=["x"])]},
     Code.INVALID_ARGUMENT, "filters.key"),
])
async def test_a_bad_search_is_refused_clearly_and_nothing_is_lost(retrieval, fields, code,
                                                                   field):
    acme = retrieval.as_tenant("acme")
    await new_collection(acme)
    error = await refusal(acme.Search(r.SearchRequest(**{"collection": "docs", **fields})))
    assert error.code() == code, error.details()
    assert field in violated_fields(error_details(error))
    assert len(await search(acme, query="password", top_k=10)) == 3


@pytest.mark.parametrize("document, reason", [
    (r.Document(id="empty", text="  \n "), "text is empty"),
    (r.Document(id="big", text="word " * 300_000), "at most 1048576"),
    (r.Document(id="", text="no id"), "id must be"),
    (r.Document(id="meta", text="x", metadata={"bad key": "v"}), "metadata key"),
])
async def test_a_bad_document_ends_the_load_and_what_came_before_stays(retrieval, document,
                                                                       reason):
    acme = retrieval.as_tenant("acme")
    await new_collection(acme)
    later = r.Document(id="later", text="This document comes after the bad one.")
    before = r.Document(id="before", text="This document comes before the bad one.")
    error = await refusal(acme.UpsertDocuments(load("docs", [before, document, later],
                                                    per_request=1)))
    assert error.code() == Code.INVALID_ARGUMENT and reason in error.details(), error.details()
    assert "document 2" in error.details()
    info = error_details(error)["ErrorInfo"]
    assert info.metadata["committed_documents"] == "1"
    ids = {p.document_id for p in await search(acme, query="document", top_k=20)}
    assert ids == {"password", "shipping", "refunds", "before"}


async def test_a_load_into_an_unknown_collection_is_not_found(retrieval):
    error = await refusal(retrieval.as_tenant("acme").UpsertDocuments(load("nope", HANDBOOK)))
    assert error.code() == Code.NOT_FOUND


async def test_tenants_never_see_each_others_documents(retrieval):
    acme, globex = retrieval.as_tenant("acme"), retrieval.as_tenant("globex")
    await new_collection(acme)
    secret = [r.Document(id=d.id, text=f"Globex confidential: project {d.id} codename "
                                       "BLUEHERON.", metadata=dict(d.metadata))
              for d in HANDBOOK]
    await new_collection(globex, documents=secret)
    for mode in (r.SEARCH_MODE_HYBRID, r.SEARCH_MODE_DENSE, r.SEARCH_MODE_KEYWORD):
        for query in ("BLUEHERON confidential project", "reset password Rotterdam refunds"):
            for passage in await search(acme, query=query, mode=mode, top_k=100):
                assert "Globex" not in passage.text
            for passage in await search(globex, query=query, mode=mode, top_k=100):
                assert "Globex" in passage.text
    forged = ["password' OR 1=1 --", 'password" or tenant != "', "password\\", "x') OR ('1'='1"]
    for value in forged:
        assert not await search(acme, query="BLUEHERON", document_ids=[value])
        assert not await search(acme, query="BLUEHERON",
                                filters=[r.MetadataFilter(key="team", any_of=[value])])
    deleted = await acme.DeleteDocuments(r.DeleteDocumentsRequest(
        collection="docs", document_ids=["password"]))
    assert deleted.deleted_documents == 1
    assert len(await search(globex, query="BLUEHERON", top_k=100)) == 3
    await acme.DeleteCollection(r.DeleteCollectionRequest(name="docs"))
    assert len(await search(globex, query="BLUEHERON", top_k=100)) == 3


async def test_a_policy_limits_the_collections_a_tenant_may_use(retrieval):
    only_faq = retrieval.as_tenant("acme", auth_pb2.Policy(allowed_collections=["faq"]))
    await only_faq.CreateCollection(r.CreateCollectionRequest(name="faq"))
    error = await refusal(only_faq.CreateCollection(r.CreateCollectionRequest(name="docs")))
    assert error.code() == Code.PERMISSION_DENIED
    assert error_details(error)["ErrorInfo"].reason == "COLLECTION_NOT_ALLOWED"
    none = retrieval.as_tenant("acme", auth_pb2.Policy())
    error = await refusal(none.Search(r.SearchRequest(collection="faq", query="x")))
    assert error.code() == Code.PERMISSION_DENIED


async def test_a_call_without_a_tenant_is_unauthenticated(retrieval):
    error = await refusal(retrieval.stub.ListCollections(r.ListCollectionsRequest()))
    assert error.code() == Code.UNAUTHENTICATED


@pytest.mark.parametrize("store", STORES)
async def test_what_was_acknowledged_survives_a_restart(store, tmp_path, encoder):
    async with running_retrieval(store, tmp_path, encoder) as retrieval:
        await new_collection(retrieval.as_tenant("acme"))
    async with running_retrieval(store, tmp_path, encoder) as retrieval:
        acme = retrieval.as_tenant("acme")
        described = await acme.DescribeCollection(r.DescribeCollectionRequest(name="docs"))
        assert described.collection.document_count == 3
        passages = await search(acme, query="Rotterdam", mode=r.SEARCH_MODE_KEYWORD)
        assert passages[0].document_id == "shipping"


@pytest.mark.parametrize("store", STORES)
async def test_a_load_cut_off_halfway_leaves_whole_documents_only(store, tmp_path, encoder):
    documents = [r.Document(id=f"doc-{i}", text=" ".join(
        f"Document {i} sentence {j} mentions item{i}x." for j in range(40)))
        for i in range(200)]
    async with running_retrieval(store, tmp_path, encoder, write_batch_chunks=32) as retrieval:
        acme = retrieval.as_tenant("acme")
        acknowledged = await new_collection(acme)
        call = acme.UpsertDocuments(load("docs", documents, per_request=1), timeout=120)
        while True:  # until some batches are committed, then the client goes away
            await asyncio.sleep(0.2)
            described = await acme.DescribeCollection(r.DescribeCollectionRequest(name="docs"))
            if described.collection.document_count >= 3 + 20:
                break
        call.cancel()
    async with running_retrieval(store, tmp_path, encoder) as retrieval:
        acme = retrieval.as_tenant("acme")
        described = (await acme.DescribeCollection(
            r.DescribeCollectionRequest(name="docs"))).collection
        assert 3 + 20 <= described.document_count < 3 + len(documents)
        for result in acknowledged.results:
            assert await search(acme, query="the", document_ids=[result.document_id],
                                mode=r.SEARCH_MODE_DENSE)
        chunks = 3
        for document in documents:
            stored = await search(acme, query=f"item{document.id[4:]}x", top_k=100,
                                  document_ids=[document.id], mode=r.SEARCH_MODE_DENSE)
            if stored:
                whole = chunk_spans(encoder.tokenizer, document.text, DEFAULT_MAX_TOKENS,
                                    DEFAULT_OVERLAP_TOKENS)
                assert sorted(p.chunk_index for p in stored) == list(range(len(whole)))
                chunks += len(stored)
        assert chunks == described.chunk_count


async def test_a_collection_deleted_while_documents_load_ends_the_load_not_found(retrieval):
    acme = retrieval.as_tenant("acme")
    await new_collection(acme)
    deleted = asyncio.Event()

    async def requests():
        yield r.UpsertDocumentsRequest(collection="docs", documents=HANDBOOK[:1])
        await deleted.wait()
        yield r.UpsertDocumentsRequest(documents=HANDBOOK[1:])
    call = acme.UpsertDocuments(requests(), timeout=30)
    await asyncio.sleep(0.3)
    await acme.DeleteCollection(r.DeleteCollectionRequest(name="docs"))
    deleted.set()
    error = await refusal(call)
    assert error.code() == Code.NOT_FOUND and "deleted" in error.details()

"""The VectorStore contract, second part (test_store_contract.py has the first): tenants that
never see each other, restarts, concurrent callers, failed writes and optimize."""
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.retrieval.store import CollectionCounts, Filters, SearchMode
from tests.integration.retrieval.store_fixtures import (
    DIMENSION, EVERY_MODE, HOSTILE, HOSTILE_DOCUMENTS, chunk_ids, created, direction,
    document_ids, search, stored_chunks, stored_texts, version)


# Tenants

TENANT_DOCUMENTS = {
    "acme": [version("d1", ["acme pelican roadmap", "acme pelican budget"], {"tag": "acme"}),
             version("d2", ["shared handbook pelican"], {"tag": "shared"})],
    "globex": [version("d1", ["globex walrus roadmap"], {"tag": "globex"}),
               version("d2", ["shared handbook pelican"], {"tag": "shared"})],
}
"""acme and globex each hold "docs" with the same document ids: d1 differs, d2 is the same
document (same hash, so the same chunk ids) in both."""


def two_tenants(store):
    acme, globex = created(store, "acme"), created(store, "globex")
    store.write_documents(acme, TENANT_DOCUMENTS["acme"])
    store.write_documents(globex, TENANT_DOCUMENTS["globex"])
    return acme, globex


def chunks_by_id(documents) -> dict:
    return {chunk.chunk_id: chunk for document in documents for chunk in document.chunks}


def test_no_search_or_filter_through_one_tenant_finds_the_others_chunks(store):
    acme, globex = two_tenants(store)
    store.write_documents(acme, HOSTILE_DOCUMENTS)
    filters = [Filters(), Filters(document_ids=("d1", "d2")), Filters(document_ids=HOSTILE),
               Filters(metadata=(("tag", ("acme", "globex", "shared")),)),
               Filters(metadata=(("tag", HOSTILE),))]
    held = {"acme": chunks_by_id(TENANT_DOCUMENTS["acme"] + HOSTILE_DOCUMENTS),
            "globex": chunks_by_id(TENANT_DOCUMENTS["globex"])}
    for spec in (acme, globex):
        for mode in EVERY_MODE:
            for query in ("pelican", "walrus roadmap", "marmalade hostile"):
                for condition in filters:
                    for hit in search(store, spec, mode, query, direction("acme pelican roadmap"),
                                      filters=condition):
                        assert held[spec.tenant].get(hit.chunk.chunk_id) == hit.chunk, (
                            f"{spec.tenant} found {hit.chunk}")
    assert stored_texts(store, globex, "d1") == ["globex walrus roadmap"]
    assert stored_texts(store, acme, "d1") == ["acme pelican roadmap", "acme pelican budget"]
    assert store.counts(globex) == CollectionCounts(documents=2, chunks=2)


def test_counts_hashes_and_deletes_through_one_tenant_touch_only_its_own(store):
    acme, globex = two_tenants(store)
    assert store.content_hashes(globex, ["d1"]) == {
        "d1": TENANT_DOCUMENTS["globex"][0].content_hash}
    assert store.counts(globex) == CollectionCounts(documents=2, chunks=2)
    assert store.delete_documents(globex, ["d1", "d2"]) == 2
    assert store.counts(globex) == CollectionCounts(documents=0, chunks=0)
    assert store.counts(acme) == CollectionCounts(documents=2, chunks=3)
    assert store.content_hashes(acme, ["d1", "d2"]) == {
        document.document_id: document.content_hash for document in TENANT_DOCUMENTS["acme"]}
    for document in TENANT_DOCUMENTS["acme"]:
        assert stored_chunks(store, acme, document.document_id) == document.chunks


def test_deleting_one_tenants_collection_leaves_the_others_intact(store):
    acme, globex = two_tenants(store)
    store.delete_collection(globex)
    assert store.get_collection("acme", "docs") == acme
    assert store.counts(acme) == CollectionCounts(documents=2, chunks=3)
    for document in TENANT_DOCUMENTS["acme"]:
        assert stored_chunks(store, acme, document.document_id) == document.chunks
    assert document_ids(search(store, acme, SearchMode.KEYWORD, "pelican")) == {"d1", "d2"}


# Restarts, concurrent callers, failed writes, optimize

def snapshot(store, spec) -> tuple:
    query = direction("acme pelican roadmap")
    return (store.counts(spec), store.content_hashes(spec, ["d1", "d2", "d3"]),
            *(chunk_ids(search(store, spec, mode, "pelican roadmap", query))
              for mode in EVERY_MODE))


def test_collections_and_documents_survive_a_restart(store_factory):
    store = store_factory()
    acme, globex = two_tenants(store)
    store.write_documents(acme, [version("d3", ["written last before the restart"])])
    store.delete_documents(globex, ["d2"])
    before = {spec: snapshot(store, spec) for spec in (acme, globex)}
    store = store_factory.restart(store)
    assert store.list_collections("acme") == [acme]
    assert store.get_collection("globex", "docs") == globex
    assert {spec: snapshot(store, spec) for spec in (acme, globex)} == before


def test_searches_from_several_threads_while_another_writes_all_succeed_and_agree(store):
    spec = created(store)
    steady = [version(f"s{i}", [f"steady {i} kestrel {part}" for part in range(3)])
              for i in range(4)]
    store.write_documents(spec, steady)
    rewrites = [version("w", [f"rewrite {n} kestrel {part}" for part in range(n % 3 + 1)])
                for n in range(8)]
    known = {chunk.chunk_id: chunk for doc in steady + rewrites for chunk in doc.chunks}
    writing = threading.Event()
    writing.set()

    def write():
        for rewrite in rewrites:
            store.write_documents(spec, [rewrite])
        writing.clear()

    def read(reader: int) -> int:
        rounds, deadline = 0, time.monotonic() + 30
        while (writing.is_set() or rounds < 3) and time.monotonic() < deadline:
            mode = EVERY_MODE[(reader + rounds) % 3]
            hits = search(store, spec, mode, "kestrel", direction(f"steady {reader} kestrel 0"))
            assert all(known[hit.chunk.chunk_id] == hit.chunk for hit in hits)
            assert len(set(chunk_ids(hits))) == len(hits)
            assert stored_chunks(store, spec, f"s{reader}") == steady[reader].chunks
            rounds += 1
        return rounds

    with ThreadPoolExecutor(max_workers=5) as pool:
        writer = pool.submit(write)
        readers = [pool.submit(read, reader) for reader in range(4)]
        writer.result()
        assert all(reader.result() >= 3 for reader in readers)
    assert stored_chunks(store, spec, "w") == rewrites[-1].chunks
    assert store.counts(spec) == CollectionCounts(documents=5, chunks=12 + len(rewrites[-1].chunks))


def broken(kind: str, document_id: str, texts: list[str]):
    rows = len(texts) if kind == "wrong dimension" else 1
    columns = DIMENSION - 1 if kind == "wrong dimension" else DIMENSION
    embeddings = np.tile(direction("broken")[:columns], (rows, 1))
    return version(document_id, texts, embeddings=embeddings / np.linalg.norm(embeddings[0]))


@pytest.mark.parametrize("kind", ["wrong dimension", "fewer embeddings than chunks"])
def test_a_failed_write_leaves_each_document_wholly_old_or_wholly_new(store, kind):
    spec = created(store)
    old = [version("d1", ["d1 old a", "d1 old b", "d1 old c"]), version("d2", ["d2 old a"]),
           version("d3", ["d3 old a", "d3 old b"])]
    new = [version("d1", ["d1 new a"]), broken(kind, "d2", ["d2 new a", "d2 new b", "d2 new c"]),
           version("d3", ["d3 new a", "d3 new b", "d3 new c"])]
    store.write_documents(spec, old)
    with contextlib.suppress(Exception):
        # Refusing the whole batch up front and failing partway through it are both allowed.
        store.write_documents(spec, new)
    hashes, chunks = store.content_hashes(spec, ["d1", "d2", "d3"]), 0
    for before, after in zip(old, new):
        held = stored_chunks(store, spec, before.document_id)
        assert held in (before.chunks, after.chunks), f"{before.document_id} is a mix: {held}"
        assert hashes[before.document_id] == (
            before.content_hash if held == before.chunks else after.content_hash)
        chunks += len(held)
    assert store.counts(spec) == CollectionCounts(documents=3, chunks=chunks)
    repaired = version("d2", ["d2 repaired"])
    store.write_documents(spec, [repaired])
    assert stored_chunks(store, spec, "d2") == repaired.chunks


def test_optimize_can_run_at_any_time_and_search_stays_right(store):
    spec = created(store)
    store.optimize(spec)
    store.write_documents(spec, [version(f"d{i}", [f"granite block {i}", f"quarry {i}"])
                                 for i in range(10)])
    store.optimize(spec)
    store.write_documents(spec, [version("d0", ["basalt column"])])
    store.delete_documents(spec, ["d1"])
    store.optimize(spec)
    store.optimize(spec)
    assert store.counts(spec) == CollectionCounts(documents=9, chunks=17)
    dense = search(store, spec, SearchMode.DENSE, embedding=direction("granite block 5"), top_k=1)
    assert chunk_ids(dense) == [version("d5", ["granite block 5", "quarry 5"]).chunks[0].chunk_id]
    assert document_ids(search(store, spec, SearchMode.KEYWORD, "basalt")) == {"d0"}
    granite = document_ids(search(store, spec, SearchMode.HYBRID, "granite", direction("quarry 3")))
    assert granite >= {f"d{i}" for i in range(2, 10)} and not granite & {"d1"}
    assert stored_texts(store, spec, "d0") == ["basalt column"]

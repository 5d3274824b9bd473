"""The VectorStore contract (services/retrieval/store.py), held against every store on a real
local directory: the catalog, whole-document writes, the three search modes, filters that
quoting cannot break, tenants that never see each other, restarts, concurrent callers, failed
writes and optimize."""
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.retrieval.store import (
    CollectionCounts, CollectionExists, Filters, SearchMode, VectorStore)
from tests.integration.retrieval.store_fixtures import (
    DIMENSION, EVERY_MODE, HOSTILE, chunk_ids, direction, document_ids, near, new_spec,
    search, stored_chunks, stored_texts, version)


class StoreFactory:
    """Opens the store under test on this test's directory, again after a restart."""

    def __init__(self, kind: str, directory):
        self.kind, self.directory, self.open_stores = kind, directory, []

    def __call__(self) -> VectorStore:
        if self.kind == "lance":
            from services.retrieval.stores.lance_store import LanceStore
            store = LanceStore(self.directory / "lance")
        else:
            from services.retrieval.stores.milvus_store import MilvusStore
            store = MilvusStore(str(self.directory / "milvus.db"))
        self.open_stores.append(store)
        return store

    def restart(self, store: VectorStore) -> VectorStore:
        self.open_stores.remove(store)
        store.close()
        return self()


@pytest.fixture(params=["lance", "milvus"])
def store_factory(request, tmp_path):
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    for store in factory.open_stores:
        store.close()


@pytest.fixture
def store(store_factory) -> VectorStore:
    return store_factory()


def created(store: VectorStore, *args, **fields):
    spec = new_spec(*args, **fields)
    store.create_collection(spec)
    return spec


# The catalog

def test_a_created_collection_is_got_back_exactly_as_created(store):
    spec = created(store, description="Handbooks, « 2025 » edition", create_time=1760000000.25)
    assert store.get_collection("acme", "docs") == spec
    assert store.list_collections("acme") == [spec]


def test_a_taken_name_raises_collection_exists_and_keeps_the_first(store):
    first = created(store)
    with pytest.raises(CollectionExists):
        store.create_collection(new_spec())
    assert store.get_collection("acme", "docs") == first
    assert store.list_collections("acme") == [first]


def test_the_same_name_under_two_tenants_is_two_collections(store):
    acme, globex = created(store, "acme"), created(store, "globex")
    store.write_documents(acme, [version("d1", ["only acme has this"])])
    assert store.get_collection("acme", "docs") == acme
    assert store.get_collection("globex", "docs") == globex
    assert store.counts(globex) == CollectionCounts(documents=0, chunks=0)


def test_list_collections_gives_only_the_tenants_own_sorted_by_name(store):
    zeta, alpha, middle = (created(store, "acme", name) for name in ("zeta", "alpha", "middle"))
    beta = created(store, "globex", "beta")
    assert store.list_collections("acme") == [alpha, middle, zeta]
    assert store.list_collections("globex") == [beta]
    assert store.list_collections("initech") == []


def test_a_tenant_and_name_are_never_confused_with_another_pair_that_joins_alike(store):
    first, second = created(store, "acme_team", "docs"), created(store, "acme", "team_docs")
    store.write_documents(first, [version("d1", ["written to the first pair"])])
    assert store.get_collection("acme_team", "docs") == first
    assert store.get_collection("acme", "team_docs") == second
    assert store.get_collection("acme", "docs") is None
    assert store.list_collections("acme") == [second]
    assert store.counts(second).chunks == 0


def test_get_of_an_unknown_collection_is_none(store):
    created(store)
    assert store.get_collection("acme", "unknown") is None
    assert store.get_collection("globex", "docs") is None


def test_a_deleted_collection_is_gone_and_deleting_it_again_is_no_error(store):
    spec, kept = created(store), created(store, name="kept")
    store.write_documents(spec, [version("d1", ["soon deleted"])])
    store.delete_collection(spec)
    store.delete_collection(spec)
    store.delete_collection(new_spec(name="never-created"))
    assert store.get_collection("acme", "docs") is None
    assert store.list_collections("acme") == [kept]


def test_a_collection_created_again_under_a_deleted_name_shares_nothing_with_the_old(store):
    old = created(store)
    store.write_documents(old, [version("d1", ["zanzibar harbour ledger", "second chunk"]),
                                version("d2", ["another zanzibar note"])])
    store.delete_collection(old)
    new = created(store)
    assert store.counts(new) == CollectionCounts(documents=0, chunks=0)
    assert store.content_hashes(new, ["d1", "d2"]) == {}
    for mode in EVERY_MODE:
        assert search(store, new, mode, "zanzibar", direction("zanzibar harbour ledger")) == []
    written = version("d1", ["a fresh start"])
    store.write_documents(new, [written])
    assert stored_chunks(store, new, "d1") == written.chunks


# Writes

def test_counts_give_the_documents_and_chunks_held(store):
    spec = created(store)
    assert store.counts(spec) == CollectionCounts(documents=0, chunks=0)
    store.write_documents(spec, [version("d1", ["one", "two", "three"]),
                                 version("d2", ["four"])])
    store.write_documents(spec, [version("d3", ["five", "six"])])
    store.write_documents(spec, [])
    assert store.counts(spec) == CollectionCounts(documents=3, chunks=6)


def test_a_new_version_with_fewer_chunks_leaves_nothing_of_the_old(store):
    spec = created(store)
    old = version("d1", ["first old chunk", "second old chunk", "third old chunk",
                         "fourth old chunk mentions obsidian"])
    store.write_documents(spec, [old, version("d2", ["a bystander"])])
    new = version("d1", ["first new chunk", "second new chunk"])
    store.write_documents(spec, [new])
    assert stored_chunks(store, spec, "d1") == new.chunks
    assert store.counts(spec) == CollectionCounts(documents=2, chunks=3)
    assert store.content_hashes(spec, ["d1"]) == {"d1": new.content_hash}
    for mode in EVERY_MODE:
        hits = search(store, spec, mode, "obsidian",
                      direction("fourth old chunk mentions obsidian"))
        assert not set(chunk_ids(hits)) & {chunk.chunk_id for chunk in old.chunks}


def test_content_hashes_give_the_stored_hash_of_only_the_documents_held(store):
    spec, other = created(store), created(store, name="other")
    d1, d2 = version("d1", ["alpha"]), version("d2", ["beta"])
    store.write_documents(spec, [d1, d2])
    store.write_documents(other, [version("d3", ["gamma"])])
    assert store.content_hashes(spec, ["d1", "d2", "d3", "missing"]) == {
        "d1": d1.content_hash, "d2": d2.content_hash}
    assert store.content_hashes(spec, []) == {}


def test_delete_documents_returns_how_many_existed_and_they_are_no_longer_found(store):
    spec, other = created(store), created(store, name="other")
    store.write_documents(spec, [version("d1", ["velvet one", "velvet two"]),
                                 version("d2", ["velvet three"]), version("d3", ["velvet four"])])
    kept = version("d1", ["velvet elsewhere"])
    store.write_documents(other, [kept])
    assert store.delete_documents(spec, ["d1", "d2", "missing"]) == 2
    assert store.delete_documents(spec, ["d1"]) == 0
    assert store.delete_documents(spec, []) == 0
    assert store.counts(spec) == CollectionCounts(documents=1, chunks=1)
    assert store.content_hashes(spec, ["d1", "d2", "d3"]).keys() == {"d3"}
    for mode in EVERY_MODE:
        assert document_ids(search(store, spec, mode, "velvet", direction("velvet one"))) == {"d3"}
    assert stored_chunks(store, other, "d1") == kept.chunks


# Search

def test_dense_gives_the_nearest_first_scored_by_cosine_similarity(store):
    spec = created(store)
    texts = ["amber", "birch", "cedar", "dune", "ember", "fjord"]
    store.write_documents(spec, [version(f"d{i}", [text]) for i, text in enumerate(texts)])
    query = near(("amber", 0.8), ("birch", 0.5), ("cedar", 0.25))
    hits = search(store, spec, SearchMode.DENSE, embedding=query, top_k=len(texts))
    expected = sorted(texts, key=lambda text: -float(query @ direction(text)))
    assert expected[:3] == ["amber", "birch", "cedar"]
    assert [hit.chunk.text for hit in hits] == expected
    for hit in hits:
        assert hit.score == pytest.approx(float(query @ direction(hit.chunk.text)), abs=1e-3)


def test_keyword_finds_a_document_by_a_word_only_it_contains(store):
    spec = created(store)
    store.write_documents(spec, [
        version("d1", ["the ferry timetable for the mainland", "ticket prices and refunds"]),
        version("d2", ["a ferry to zanzibar leaves at noon", "luggage rules"]),
        version("d3", ["mainland bus routes"])])
    hits = search(store, spec, SearchMode.KEYWORD, "zanzibar")
    assert [hit.chunk.text for hit in hits] == ["a ferry to zanzibar leaves at noon"]
    assert hits[0].score > 0


def hybrid_collection(store):
    spec = created(store)
    store.write_documents(spec, [
        version("both", ["zanzibar quokka harbour"]), version("dense", ["meadow lantern"]),
        version("keyword", ["quokka colony census"]),
        *(version(f"filler{i}", [f"ordinary filler {i}"]) for i in range(3))])
    return spec, near(("zanzibar quokka harbour", 0.8), ("meadow lantern", 0.55))


def test_hybrid_ranks_first_the_chunk_best_in_both_and_finds_the_best_of_each(store):
    spec, query = hybrid_collection(store)
    hits = search(store, spec, SearchMode.HYBRID, "zanzibar quokka", query, top_k=3)
    assert hits[0].chunk.document_id == "both"
    assert document_ids(hits) == {"both", "dense", "keyword"}


def test_hybrid_scores_by_reciprocal_rank_fusion_with_k_60(store):
    spec, query = hybrid_collection(store)
    hits = search(store, spec, SearchMode.HYBRID, "zanzibar quokka", query, top_k=3)
    assert hits[0].score == pytest.approx(2 / (60 + 1), rel=1e-3)


def test_top_k_bounds_the_hits_in_every_mode(store):
    spec = created(store)
    store.write_documents(spec, [version(f"d{i}", [f"common word {i}", f"common again {i}"])
                                 for i in range(4)])
    for mode in EVERY_MODE:
        assert len(search(store, spec, mode, "common", top_k=3)) == 3
        assert len(search(store, spec, mode, "common", top_k=20)) == 8
        assert len(search(store, spec, mode, "common", top_k=1)) == 1


def test_hits_carry_the_chunks_exactly_as_written(store):
    spec = created(store)
    written = version("guide", ["Grüße aus 東京 🚀 glacier", "a second glacier chunk"],
                      {"lang": "de", "title": "Reiseführer « 東京 »", "empty": ""})
    bare = version("bare", ["glacier without metadata"])
    store.write_documents(spec, [written, bare])
    expected = {chunk.chunk_id: chunk for chunk in written.chunks + bare.chunks}
    for mode in EVERY_MODE:
        hits = search(store, spec, mode, "glacier", direction("a second glacier chunk"))
        assert {hit.chunk.chunk_id: hit.chunk for hit in hits} == expected


# Filters

def filtered_collection(store, spec=None):
    spec = spec or created(store)
    store.write_documents(spec, [
        version("en-guide", ["marmalade recipe one"], {"lang": "en", "kind": "guide"}),
        version("en-note", ["marmalade recipe two"], {"lang": "en", "kind": "note"}),
        version("fr-guide", ["marmalade recette trois"], {"lang": "fr", "kind": "guide"}),
        version("de-note", ["marmalade rezept vier"], {"lang": "de", "kind": "note"}),
        version("untagged", ["marmalade without tags"])])
    return spec


def found(store, spec, mode, filters: Filters) -> set[str]:
    return document_ids(search(store, spec, mode, "marmalade", direction("marmalade recipe one"),
                               filters=filters))


def test_a_document_ids_filter_keeps_only_those_documents(store):
    spec = filtered_collection(store)
    for mode in EVERY_MODE:
        assert found(store, spec, mode, Filters(document_ids=("en-note", "untagged", "nope"))) == {
            "en-note", "untagged"}


def test_a_metadata_filter_matches_any_of_its_values_and_never_a_document_without_the_key(
        store):
    spec = filtered_collection(store)
    for mode in EVERY_MODE:
        assert found(store, spec, mode, Filters(metadata=(("lang", ("en", "de")),))) == {
            "en-guide", "en-note", "de-note"}
        assert found(store, spec, mode, Filters(metadata=(("colour", ("en",)),))) == set()


def test_every_filter_must_hold(store):
    spec = filtered_collection(store)
    both = Filters(metadata=(("lang", ("en", "fr")), ("kind", ("guide",))))
    with_ids = Filters(document_ids=("en-guide", "de-note"), metadata=(("kind", ("note",)),))
    for mode in EVERY_MODE:
        assert found(store, spec, mode, both) == {"en-guide", "fr-guide"}
        assert found(store, spec, mode, with_ids) == {"de-note"}


HOSTILE_DOCUMENTS = [version(value, [f"marmalade hostile {index}"], {"tag": value})
                     for index, value in enumerate(HOSTILE)]


def test_filter_values_and_document_ids_that_break_quoting_match_only_themselves(store):
    spec = created(store)
    store.write_documents(spec, HOSTILE_DOCUMENTS)
    store.write_documents(spec, [version("plain", ["marmalade plain"], {"tag": "plain"})])
    for mode in EVERY_MODE:
        for value in HOSTILE:
            assert found(store, spec, mode, Filters(document_ids=(value,))) == {value}
            assert found(store, spec, mode, Filters(metadata=(("tag", (value,)),))) == {value}
        for value in ("' OR '1'='1", '" or 1 == 1 or "', "it''s", "it\\'s", 'say \\"hi\\"', "%",
                      "\\", "_"):
            assert found(store, spec, mode, Filters(document_ids=(value,))) == set()
            assert found(store, spec, mode, Filters(metadata=(("tag", (value,)),))) == set()


@pytest.mark.parametrize("mode", [SearchMode.KEYWORD, SearchMode.HYBRID])
def test_query_text_that_looks_like_query_syntax_is_searched_as_plain_words(store, mode):
    spec = filtered_collection(store)
    for text in (*HOSTILE, 'lang:en', '+must -not', '"unclosed', 'a AND (b', 'wild*', 'fuzzy~2^3',
                 'NOT', '[x TO y]', '{}', ':', '&&', '||', '!'):
        hits = search(store, spec, mode, f"{text} marmalade", filters=Filters())
        assert document_ids(hits) == {"en-guide", "en-note", "fr-guide", "de-note", "untagged"}


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

"""The VectorStore contract (services/retrieval/store.py), held against every store on a real
local directory (the store fixtures are in conftest.py): the catalog, whole-document writes,
the three search modes and filters that quoting cannot break. test_store_isolation.py holds
the rest: tenants, restarts, concurrent callers, failed writes and optimize."""
import pytest

from services.retrieval.store import CollectionCounts, CollectionExists, Filters, SearchMode
from tests.integration.retrieval.store_fixtures import (
    EVERY_MODE, HOSTILE, HOSTILE_DOCUMENTS, chunk_ids, created, direction, document_ids, near,
    new_spec, search, stored_chunks, version)


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

"""Retrieval on each store, in one run: search latency at 100k chunks through the service (a
tenant's collection beside another tenant's), the dense index's recall@10 against exact search,
ingestion throughput through UpsertDocuments with the real embedding model, and what embedding
a query costs.

    python -m bench.retrieval        (--help for the knobs)

The 100k chunks are synthetic (random words, clustered random unit vectors) and written to the
store directly: embedding them with the model would take over an hour here, at ~20 chunks a
second. Searches and loads go through `python -m services.retrieval` in its own process,
called as the router calls it (tenant headers, no Envoy), one call at a time."""
import argparse
import asyncio
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from deploy.local.supervisor import ManagedProcess
from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.retrieval.v1 import retrieval_pb2 as r, retrieval_pb2_grpc
from meshllm.sentence_embeddings import MODEL_NAME, SentenceEncoder, default_model_path
from meshllm.tenancy import POLICY_HEADER, TENANT_HEADER
from services.retrieval.__main__ import open_store
from services.retrieval.config import RetrievalSettings
from bench.synthetic_corpus import (DIMENSION, WORDS, SyntheticCorpus, dense_recall,
                                   load_directly)
from services.retrieval.store import CollectionSpec
from services.retrieval.validation import (DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS,
                                           MAX_CHUNK_TOKENS)

TENANT, OTHER_TENANT = "bench", "bench-neighbour"
POLICY = auth_pb2.Policy(allowed_collections=["*"]).SerializeToString()
WARM_UP = 20


def spec_for(tenant: str, name: str) -> CollectionSpec:
    return CollectionSpec(tenant=tenant, name=name, uid=uuid.uuid4().hex, dimension=DIMENSION,
                          embedding_model=MODEL_NAME, max_tokens=DEFAULT_MAX_TOKENS,
                          overlap_tokens=DEFAULT_OVERLAP_TOKENS, create_time=time.time())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def timed_searches(stub, requests: list[r.SearchRequest]) -> list[float]:
    """Seconds of each search but the first 20 (the warm-up: the service caches query
    embeddings, so the timed queries are others)."""
    metadata = ((TENANT_HEADER, TENANT), (POLICY_HEADER, POLICY))
    for request in requests[:WARM_UP]:
        [_ async for _ in stub.Search(request, metadata=metadata, timeout=30)]
    seconds = []
    for request in requests[WARM_UP:]:
        started = time.perf_counter()
        passages = [p async for response in stub.Search(request, metadata=metadata, timeout=30)
                    for p in response.passages]
        seconds.append(time.perf_counter() - started)
        assert passages, request
    return seconds


async def ingestion_rate(stub, corpus: SyntheticCorpus, documents: int) -> tuple[int, float]:
    """(chunks, chunks per second) of one UpsertDocuments of `documents` new documents of
    ~600 words, embedded by the service."""
    metadata = ((TENANT_HEADER, TENANT), (POLICY_HEADER, POLICY))
    await stub.CreateCollection(r.CreateCollectionRequest(name="ingest"), metadata=metadata,
                                timeout=30)
    texts = [". ".join(corpus.text(12) for _ in range(50)) for _ in range(documents)]

    async def load():
        for first in range(0, documents, 20):
            yield r.UpsertDocumentsRequest(collection="ingest", documents=[
                r.Document(id=f"ingest-{n}", text=texts[n])
                for n in range(first, min(documents, first + 20))])
    started = time.perf_counter()
    response = await stub.UpsertDocuments(load(), metadata=metadata, timeout=600)
    return response.chunks_written, response.chunks_written / (time.perf_counter() - started)


def query_embedding_ms(queries: list[str]) -> float:
    import torch

    torch.set_num_threads(1)  # as the service runs it (MESHLLM_RETRIEVAL_TORCH_THREADS)
    encoder = SentenceEncoder(default_model_path(), MAX_CHUNK_TOKENS, cache_size=0)
    encoder.embed_uncached(queries[:5])
    seconds = []
    for query in queries:
        started = time.perf_counter()
        encoder.embed_uncached([query])
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1000


def prepared_store(settings: RetrievalSettings, chunks: int, recall_queries: int) -> dict:
    """Loads the corpus (and the neighbour's), builds the indexes and measures recall; in a
    process of its own, run by bench_store: Milvus Lite's server lives as long as the process
    that opened its file, and the service must open it next."""
    corpus = SyntheticCorpus(seed=0)
    result = {}
    store = open_store(settings)
    spec, neighbour = spec_for(TENANT, "corpus"), spec_for(OTHER_TENANT, "corpus")
    store.create_collection(spec)
    store.create_collection(neighbour)
    load_seconds, ids, vectors = load_directly(store, spec, corpus, chunks)
    load_directly(store, neighbour, SyntheticCorpus(seed=1), chunks // 10)
    started = time.perf_counter()
    store.optimize(spec)
    store.optimize(neighbour)
    result["load"] = chunks / load_seconds
    result["index"] = time.perf_counter() - started
    result["recall"] = dense_recall(store, spec, ids, vectors, corpus.vectors(recall_queries))
    store.close()
    return result


async def bench_store(kind: str, args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-retrieval-{kind}-"))
    settings = RetrievalSettings(store=kind, lance_directory=str(workdir / "lance"),
                                 milvus_uri=str(workdir / "milvus.db"))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        result = {"store": kind, **await asyncio.get_running_loop().run_in_executor(
            child, prepared_store, settings, args.chunks, args.recall_queries)}
    corpus = SyntheticCorpus(seed=0)
    process = ManagedProcess(f"retrieval-{kind}", [sys.executable, "-m", "services.retrieval"],
                             env={
        "MESHLLM_RETRIEVAL_STORE": kind,
        "MESHLLM_RETRIEVAL_LANCE_DIRECTORY": settings.lance_directory,
        "MESHLLM_RETRIEVAL_MILVUS_URI": settings.milvus_uri,
        "MESHLLM_RETRIEVAL_CONTROLPLANE_ADDRESS": "", "MESHLLM_RETRIEVAL_LOG_LEVEL": "warning"})
    await process.start(timeout=180)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            words = np.random.default_rng(3)

            def new_questions() -> list[str]:  # never one the service embedded (and cached)
                return [" ".join(words.choice(WORDS, 3)) for _ in range(WARM_UP + args.queries)]
            for mode, name in ((r.SEARCH_MODE_HYBRID, "hybrid"), (r.SEARCH_MODE_DENSE, "dense"),
                               (r.SEARCH_MODE_KEYWORD, "keyword")):
                questions = new_questions()
                result[name] = await timed_searches(stub, [
                    r.SearchRequest(collection="corpus", query=q, top_k=10, mode=mode)
                    for q in questions])
            vectors = SyntheticCorpus(seed=4).vectors(WARM_UP + args.queries)
            result["given"] = await timed_searches(stub, [
                r.SearchRequest(collection="corpus", query_embedding=v.tolist(), top_k=10,
                                mode=r.SEARCH_MODE_DENSE) for v in vectors])
            result["hybrid given"] = await timed_searches(stub, [
                r.SearchRequest(collection="corpus", query=q, query_embedding=v.tolist(),
                                top_k=10) for q, v in zip(questions, vectors)])
            result["ingested"], result["ingest"] = await ingestion_rate(
                stub, corpus, args.ingest_documents)
    finally:
        await process.stop()
    result["questions"] = questions
    return result


def summary(result: dict) -> str:
    """The store's table row, after its name."""
    def p(name):
        values = [s * 1000 for s in result[name]]
        return f"{statistics.median(values):.1f} / {percentile(values, 0.99):.1f}"
    return (f"{p('hybrid')} | {p('hybrid given')} | {p('dense')} | {p('given')} | "
            f"{p('keyword')} | {result['recall']:.3f} | {result['ingest']:.0f} "
            f"({result['ingested']} chunks) | {result['load']:.0f} | {result['index']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="lance,milvus")
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--recall-queries", type=int, default=50)
    parser.add_argument("--ingest-documents", type=int, default=100)
    args = parser.parse_args()
    results = []
    for kind in args.stores.split(","):
        results.append(asyncio.run(bench_store(kind, args)))
        print(f"({kind} done: {summary(results[-1])})", flush=True)
    embedding = query_embedding_ms(results[0]["questions"][WARM_UP:WARM_UP + 100])
    print(f"\nmeshllm bench: retrieval, {args.chunks} chunks in the tenant's collection (and "
          f"{args.chunks // 10} in a neighbour's), top_k 10, {args.queries} sequential searches "
          f"through the service; {platform.machine()}, {platform.python_version()}")
    print("| store | hybrid p50 / p99 ms | hybrid, embedding given | dense | dense, embedding "
          "given | keyword | recall@10 (dense index) | ingestion chunks/s | direct load "
          "chunks/s | index build s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print(f"| {result['store']} | {summary(result)} |")
    print(f"\nquery embedding (all-MiniLM-L6-v2, one thread, one query): p50 {embedding:.1f} ms; "
          "the searches above include it, except 'embedding given'")


if __name__ == "__main__":
    main()

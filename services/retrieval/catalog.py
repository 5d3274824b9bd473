"""Collections by tenant and name, in front of the store's own catalog.

A search looks its collection up first; the store's lookup costs a few ms (a table scan in
LanceDB, a query in Milvus), so what was found is kept for `ttl` seconds. A collection deleted
through another replica can thus be found for that long; its searches then find no table
(CollectionMissing: NOT_FOUND) or nothing, never another collection's rows, since a new
collection of the same name has a new uid."""
import asyncio
import time
import uuid

from services.retrieval.store import CollectionSpec, VectorStore


class CollectionCatalog:
    def __init__(self, store: VectorStore, embedding_model: str, dimension: int, ttl: float):
        self._store = store
        self._embedding_model = embedding_model
        self._dimension = dimension
        self._ttl = ttl
        self._found: dict[tuple[str, str], tuple[float, CollectionSpec]] = {}

    async def get(self, tenant: str, name: str) -> CollectionSpec | None:
        key = (tenant, name)
        found = self._found.get(key)
        if found is not None and time.monotonic() - found[0] < self._ttl:
            return found[1]
        spec = await asyncio.to_thread(self._store.get_collection, tenant, name)
        if spec is None:
            self._found.pop(key, None)
        else:
            self._found[key] = (time.monotonic(), spec)
        return spec

    async def create(self, tenant: str, name: str, description: str, max_tokens: int,
                     overlap_tokens: int) -> CollectionSpec:
        """Raises CollectionExists."""
        spec = CollectionSpec(tenant=tenant, name=name, uid=uuid.uuid4().hex,
                              dimension=self._dimension, embedding_model=self._embedding_model,
                              max_tokens=max_tokens, overlap_tokens=overlap_tokens,
                              description=description, create_time=time.time())
        await asyncio.to_thread(self._store.create_collection, spec)
        return spec

    async def list(self, tenant: str) -> list[CollectionSpec]:
        return await asyncio.to_thread(self._store.list_collections, tenant)

    async def delete(self, spec: CollectionSpec) -> None:
        self._found.pop((spec.tenant, spec.name), None)
        await asyncio.to_thread(self._store.delete_collection, spec)

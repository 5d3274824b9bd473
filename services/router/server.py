"""The public InferenceService: protos in, the pipeline, protos out."""
from contextlib import aclosing

import grpc

from meshllm.api.inference.v1 import inference_pb2, inference_pb2_grpc
from meshllm.request_context import current_request_id
from meshllm.tenancy import Tenancy
from services.router.model_catalog import ModelCatalog
from services.router.model_choice import default_model
from services.router.pipeline import GenerationCall, Pipeline


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, pipeline: Pipeline, catalog: ModelCatalog, default_model: str):
        self._pipeline = pipeline
        self._catalog = catalog
        self._default_model = default_model

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        """Yields public events, or the bytes of deltas passed through from generation; a
        refusal (meshllm.errors.CallRefused) ends the call with its status and details."""
        call = GenerationCall(request, current_request_id(), context.time_remaining,
                              Tenancy.of(context.invocation_metadata()))
        async with aclosing(await self._pipeline.start(call)) as events:
            async for event in events:
                yield event

    async def ListModels(self, request, context: grpc.aio.ServicerContext):
        pools = await self._catalog.pools()
        default = default_model(pools, self._default_model)
        return inference_pb2.ListModelsResponse(models=[
            inference_pb2.Model(name=pool.name, ready_replicas=pool.ready_replicas,
                                max_context_tokens=pool.max_context_tokens,
                                is_default=pool.name == default)
            for pool in sorted(pools.values(), key=lambda pool: pool.name)
        ])

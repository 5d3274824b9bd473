"""The checks the router runs before generation: the request's own rules, the model."""
import grpc

from meshllm.generate_input import InvalidInput, check_fits_context, check_input, check_sampling
from services.router.errors import RequestRejected
from services.router.model_catalog import ModelCatalog
from services.router.model_choice import choose_model
from services.router.pipeline import GenerationCall


async def check_request(call: GenerationCall) -> None:
    """Refuses input that can never succeed before any model is involved."""
    request = call.request
    try:
        check_input(request.WhichOneof("input"), request.chat, request.prompt)
        check_sampling(request.sampling)
    except InvalidInput as error:
        raise RequestRejected(grpc.StatusCode.INVALID_ARGUMENT, str(error),
                              reason="INVALID_INPUT", field=error.field) from None


class ChooseModel:
    """Picks the model pool and checks that the request fits that model's context."""

    def __init__(self, catalog: ModelCatalog, default_model: str):
        self._catalog = catalog
        self._default_model = default_model

    async def __call__(self, call: GenerationCall) -> None:
        pools = await self._catalog.pools()
        call.model = choose_model(call.request.model, pools, self._default_model)
        try:
            if call.model.pool.max_context_tokens:  # 0: the replicas did not say
                check_fits_context(call.request.sampling.max_tokens,
                                   call.model.pool.max_context_tokens)
        except InvalidInput as error:
            raise RequestRejected(grpc.StatusCode.INVALID_ARGUMENT, str(error),
                              reason="INVALID_INPUT", field=error.field) from None

"""The checks the router runs before generation: the request's own rules, the model."""
import grpc

from meshllm.generate_input import (InvalidInput, check_fits_context, check_input,
                                    check_labels, check_sampling)
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
        check_labels(request.labels)
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


async def check_tenant_policy(call: GenerationCall) -> None:
    """What Envoy cannot see in the request body: the model and max_tokens the tenant's policy
    allows. Runs after the model is chosen."""
    tenancy = call.tenancy
    if tenancy is None:
        raise RequestRejected(
            grpc.StatusCode.UNAUTHENTICATED,
            "the call carries no tenant: call the mesh through Envoy's public listener with "
            "'authorization: Bearer <api key>'", reason="TENANT_MISSING")
    policy = tenancy.policy
    model = call.model.pool.name
    if policy.allowed_models and model not in policy.allowed_models:
        raise RequestRejected(
            grpc.StatusCode.PERMISSION_DENIED,
            f"tenant {tenancy.tenant!r} may not use model {model!r}; its policy allows: "
            f"{', '.join(policy.allowed_models)}", reason="MODEL_NOT_ALLOWED", field="model")
    max_tokens = call.request.sampling.max_tokens
    if policy.max_tokens_per_request and max_tokens > policy.max_tokens_per_request:
        raise RequestRejected(
            grpc.StatusCode.PERMISSION_DENIED,
            f"max_tokens {max_tokens} is over the {policy.max_tokens_per_request} tokens per "
            f"request that tenant {tenancy.tenant!r}'s policy allows",
            reason="MAX_TOKENS_OVER_POLICY", field="sampling.max_tokens")

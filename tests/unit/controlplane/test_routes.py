from services.controlplane import routes

INFERENCE = "/meshllm.inference.v1.InferenceService/"
AUTH_ADMIN = "/meshllm.auth.v1.AuthService/"
AUTH_USAGE = "/meshllm.auth.v1.UsageService/"
MODERATION = "/meshllm.moderation.v1.ModerationService/"
AUDIT = "/meshllm.moderation.v1.AuditService/"
RETRIEVAL = "/meshllm.retrieval.v1.RetrievalService/"


def by_prefix(config) -> dict:
    return {route.match.prefix: route for route in config.virtual_hosts[0].routes}


def routed(config, path: str) -> str | None:
    """The cluster that a call to `path` goes to (first matching prefix, as Envoy picks)."""
    for route in config.virtual_hosts[0].routes:
        if path.startswith(route.match.prefix) and not route.match.headers:
            return route.route.cluster if route.HasField("route") else None
    return None


def test_the_public_listener_routes_the_public_apis_reflection_and_the_admin_apis_only():
    public = routes.public_routes()
    assert set(by_prefix(public)) == {INFERENCE, RETRIEVAL, "/grpc.reflection.", AUTH_ADMIN, AUDIT}
    assert routed(public, INFERENCE + "Generate") == "router"
    assert routed(public, "/grpc.reflection.v1alpha.ServerReflection/Info") == "router"
    assert routed(public, AUTH_ADMIN + "CreateApiKey") == "auth"
    assert routed(public, AUDIT + "ExportAuditLog") == "moderation"
    assert routed(public, RETRIEVAL + "Search") == "retrieval"


def test_moderation_judges_text_on_the_mesh_only_and_its_trail_is_read_on_the_public_listener():
    public, mesh = routes.public_routes(), routes.mesh_routes({"tiny": 1}, [])
    assert routed(public, MODERATION + "ModerateText") is None
    assert routed(mesh, MODERATION + "ModerateStream") == "moderation"
    assert routed(mesh, AUDIT + "ListVerdicts") is None


def test_auths_usage_api_is_not_reachable_on_the_public_listener():
    public = routes.public_routes()
    for method in ("Reserve", "Settle"):
        assert routed(public, AUTH_USAGE + method) is None
    assert routed(public, "/meshllm.auth.v1.") is None


def test_the_mesh_listener_routes_auths_usage_api_and_not_its_admin_api():
    mesh = routes.mesh_routes({"tiny": 1}, ["retrieval"])
    assert routed(mesh, AUTH_USAGE + "Reserve") == "auth"
    assert routed(mesh, AUTH_ADMIN + "CreateApiKey") is None


def test_inference_calls_carry_one_tenant_descriptor_from_the_headers_ext_authz_sets():
    inference = by_prefix(routes.public_routes())[INFERENCE]
    (limit,) = inference.route.rate_limits
    tenant, requests_per_minute = limit.actions
    assert (tenant.request_headers.header_name, tenant.request_headers.descriptor_key) == (
        "x-meshllm-tenant", "tenant")
    # Set by ext_authz only for a tenant with a request limit; absent, it drops the whole
    # descriptor (skip_if_absent false), so an unlimited tenant costs no rate-limit call.
    assert (requests_per_minute.request_headers.header_name,
            requests_per_minute.request_headers.descriptor_key,
            requests_per_minute.request_headers.skip_if_absent) == (
        "x-meshllm-requests-per-minute", "limit", False)
    assert not limit.HasField("stage")  # stage 0, the rate limit filter's (its default)


def test_only_inference_and_retrieval_calls_are_rate_limited():
    public = by_prefix(routes.public_routes())
    assert public[RETRIEVAL].route.rate_limits == public[INFERENCE].route.rate_limits
    for prefix, route in public.items():
        if prefix not in (INFERENCE, RETRIEVAL):
            assert not route.route.rate_limits, prefix


def test_auth_routes_are_unary_bounded_and_retried_only_before_a_replica_saw_the_call():
    for route in (by_prefix(routes.public_routes())[AUTH_ADMIN],
                  by_prefix(routes.mesh_routes({}, []))[AUTH_USAGE]):
        assert route.route.timeout.ToMilliseconds() == 15_000
        # The caller's grpc-timeout bounds the call, at most the route's own bound.
        assert route.route.max_stream_duration.grpc_timeout_header_max.ToMilliseconds() == 15_000
        assert set(route.route.retry_policy.retry_on.split(",")) == {
            "connect-failure", "refused-stream"}

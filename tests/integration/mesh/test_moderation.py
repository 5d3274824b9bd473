"""Moderation end to end through Envoy: a LocalMesh on the sim engine whose text carries a card
number and an email one word or mark per token (so each arrives split across deltas), and a
second pool that echoes the prompt it was sent (what reached the engine). Tenants and policies
are made with the admin API; the trail is read with the CLI, as an admin would."""
import asyncio
import os
import sqlite3
import subprocess
import sys

import grpc
import pytest

from deploy.local.envoy_admin import stat
from deploy.local.mesh import LocalMesh, MeshOptions, MeshPorts
from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.generation.v1 import generation_pb2, generation_pb2_grpc
from meshllm.api.inference.v1 import inference_pb2
from meshllm.api.moderation.v1 import moderation_pb2 as m, moderation_pb2_grpc
from meshllm.api_key import bearer
from meshllm.tenancy import POLICY_HEADER, TENANT_HEADER
from services.generation.sim_engine import sim_tokens, word_for
from tests.integration.mesh.tenant_client import TenantClient, reason
from tests.status_details import error_details, violated_fields

Code = grpc.StatusCode
MODEL, ECHO_MODEL = "sim-moderated", "sim-echo"
CARD, EMAIL = "4111 1111 1111 1111", "jane.doe@example.com"
SIM_TEXT = f"Your card {CARD} and mail {EMAIL} are on file. Thanks for waiting. "
PROMPT = f"My card is {CARD}, mail me at {EMAIL} please"
DEFAULT_POLICY = auth_pb2.Policy(moderation=m.ModerationPolicy())
"""Moderation as the mesh's default policy has it (set, so that the tenant client keeps it)."""
OUTPUT_BLOCKS_PERSONAL_DATA = auth_pb2.Policy(moderation=m.ModerationPolicy(rules=[
    m.CategoryRule(category=m.CATEGORY_PERSONAL_DATA, stage=m.STAGE_OUTPUT,
                   action=m.ACTION_BLOCK)]))


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory):
    mesh = LocalMesh(MeshOptions(
        ports=MeshPorts.free(), engine="sim", model=MODEL,
        workdir=tmp_path_factory.mktemp("mesh"),
        generation_env=(("MESHLLM_GENERATION_SIM_TEXT", SIM_TEXT),
                        ("MESHLLM_GENERATION_SIM_INTER_TOKEN_LATENCY_SECONDS", "0.01"))))
    async with mesh.running(generation_replicas=1):
        echo = mesh.generation_replica("echo-1")
        echo.env.update(MESHLLM_MODEL=ECHO_MODEL, MESHLLM_GENERATION_SIM_ECHO_PROMPT="true")
        await mesh.supervisor.start(echo, timeout=60)
        await mesh.wait_until_routed([echo])
        yield mesh


async def stream(client: TenantClient, key: str, prompt: str, max_tokens: int,
                 model: str = MODEL) -> list[inference_pb2.GenerateResponse]:
    call = client.inference.Generate(inference_pb2.GenerateRequest(
        prompt=prompt, model=model, sampling={"max_tokens": max_tokens, "seed": 0}),
        metadata=bearer(key), timeout=30)
    return [event async for event in call]


def text_of(events) -> str:
    return "".join(event.delta.text for event in events if event.HasField("delta"))


def moderation_events(events, stage: int | None = None) -> list[inference_pb2.ModerationEvent]:
    return [event.moderation for event in events if event.HasField("moderation")
            and (stage is None or event.moderation.stage == stage)]


async def test_a_card_number_and_an_email_split_across_deltas_reach_the_client_redacted(client):
    _, key, _ = await client.new_tenant(DEFAULT_POLICY)
    events = await stream(client, key, "hi", max_tokens=30)
    text = text_of(events)
    assert "[CARD_NUMBER]" in text and "[EMAIL]" in text, text
    for part in ("4111", "1111", "jane", "doe", "example.com"):
        assert part not in text, (part, text)
    redactions = moderation_events(events, m.STAGE_OUTPUT)
    assert {(e.category, e.action) for e in redactions} == {
        (m.CATEGORY_PERSONAL_DATA, m.ACTION_REDACT)}
    assert events[-1].finished.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    # Text on either side of the redactions arrives as the engine made it.
    assert text.startswith("Your card [CARD_NUMBER] and mail [EMAIL] are on file.")


async def test_under_block_the_stream_ends_before_the_card_number_and_the_engine_stops(
        client, mesh):
    _, key, _ = await client.new_tenant(OUTPUT_BLOCKS_PERSONAL_DATA)
    events = await stream(client, key, "hi", max_tokens=200)
    assert "1111" not in text_of(events) and "4111" not in text_of(events)
    blocked = moderation_events(events, m.STAGE_OUTPUT)[-1]
    assert (blocked.category, blocked.action) == (m.CATEGORY_PERSONAL_DATA, m.ACTION_BLOCK)
    assert CARD not in blocked.message and blocked.detector
    finished = events[-1].finished
    assert finished.finish_reason == inference_pb2.FINISH_REASON_CONTENT_FILTER
    assert 0 < finished.usage.completion_tokens < 200
    replica = mesh.generation["generation-1"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        load = generation_pb2_grpc.GenerationServiceStub(channel)
        blocked_at = asyncio.get_running_loop().time()
        while (await load.GetLoad(generation_pb2.GetLoadRequest())).running_requests:
            assert asyncio.get_running_loop().time() - blocked_at < 1.0, \
                "the replica still generates for a blocked stream after 1 s"
            await asyncio.sleep(0.02)


async def test_the_model_never_receives_personal_data_the_default_policy_redacts_in_the_input(
        client):
    _, key, _ = await client.new_tenant(DEFAULT_POLICY)
    events = await stream(client, key, PROMPT, max_tokens=20, model=ECHO_MODEL)
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "started" and kinds[1] == "moderation", kinds
    redacted = moderation_events(events, m.STAGE_INPUT)
    assert {(e.category, e.action) for e in redacted} == {
        (m.CATEGORY_PERSONAL_DATA, m.ACTION_REDACT)} and len(redacted) == 2
    # The echo pool generates the prompt it received: the placeholders, and nothing for the
    # output's own moderation to redact.
    text = text_of(events)
    assert "[CARD_NUMBER]" in text and "[EMAIL]" in text, text
    assert not moderation_events(events, m.STAGE_OUTPUT)


async def test_a_blocked_input_never_reaches_a_replica(client):
    _, key, _ = await client.new_tenant(auth_pb2.Policy(moderation=m.ModerationPolicy(
        blocklist=["project zorp"])))
    events = await stream(client, key, "Tell me about Project Zorp", max_tokens=5)
    assert [event.WhichOneof("event") for event in events] == ["moderation", "finished"]
    assert events[0].moderation.category == m.CATEGORY_BLOCKLIST
    assert events[1].finished.finish_reason == inference_pb2.FINISH_REASON_CONTENT_FILTER
    assert events[1].finished.usage.completion_tokens == 0


async def test_every_verdict_is_on_the_trail_which_the_cli_shows_and_verifies(client, mesh):
    tenant, key, _ = await client.new_tenant(DEFAULT_POLICY)
    admin = await client.admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        tenant_id=tenant, name="audit", role=auth_pb2.API_KEY_ROLE_ADMIN), timeout=10)
    events = await stream(client, key, PROMPT, max_tokens=30)
    request_id = events[0].started.request_id
    await asyncio.sleep(0.5)  # the trail is written in batches, every 50 ms
    shown = cli(mesh, admin.secret, "audit", "show", request_id)
    assert shown.returncode == 0, shown.stderr
    assert "personal_data" in shown.stdout and "redact" in shown.stdout
    assert "input" in shown.stdout and "output" in shown.stdout
    verified = cli(mesh, admin.secret, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Another tenant's admin sees none of it.
    other, _, _ = await client.new_tenant(DEFAULT_POLICY)
    other_admin = await client.admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        tenant_id=other, name="audit", role=auth_pb2.API_KEY_ROLE_ADMIN), timeout=10)
    assert cli(mesh, other_admin.secret, "audit", "show", request_id).returncode != 0
    # A client key may not read the trail at all.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await moderation_pb2_grpc.AuditServiceStub(client.channel).ListVerdicts(
            m.ListVerdictsRequest(request_id=request_id), metadata=bearer(key), timeout=10)
    assert refused.value.code() == Code.PERMISSION_DENIED
    # One record changed on disk: verify fails and names it.
    with sqlite3.connect(mesh.options.workdir / "moderation-audit.db") as db:
        (sequence,) = db.execute(
            "SELECT sequence FROM audit_records WHERE tenant_id = ? AND request_id = ? "
            "ORDER BY sequence LIMIT 1", (tenant, request_id)).fetchone()
        db.execute("UPDATE audit_records SET action = ? WHERE tenant_id = ? AND sequence = ?",
                   (m.ACTION_ALLOW, tenant, sequence))
    tampered = cli(mesh, admin.secret, "audit", "verify")
    assert tampered.returncode == 1
    assert f"record {sequence}" in tampered.stdout + tampered.stderr


async def test_moderated_calls_end_their_moderation_streams_without_a_reset(client, mesh):
    """Envoy closes a connection (GOAWAY, every stream on it) once most of its streams were
    reset within a second of starting: the router must end a ModerateStream it is done with
    cleanly, and open none for a call that never streams text."""
    _, key, _ = await client.new_tenant(DEFAULT_POLICY)
    resets = "http.mesh.downstream_rq_rx_reset"
    before = await stat(mesh.options.ports.admin, resets)
    for _ in range(10):
        events = await stream(client, key, "hi", max_tokens=30)
        assert events[-1].finished.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert await stat(mesh.options.ports.admin, resets) == before


def cli(mesh, key: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "MESHLLM_ENDPOINT": f"127.0.0.1:{mesh.options.ports.public}",
             "MESHLLM_API_KEY": key, "COLUMNS": "200"})


@pytest.mark.parametrize("texts, field", [
    ([], "texts"),
    ([""], "texts[0]"),
    (["x" * (300 * 1024)], "texts[0]"),
])
async def test_empty_or_huge_text_is_refused_with_the_field_named(mesh, texts, field):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.mesh}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await moderation_pb2_grpc.ModerationServiceStub(channel).ModerateText(
                m.ModerateTextRequest(texts=texts), metadata=tenant_headers(), timeout=10)
    assert refused.value.code() == Code.INVALID_ARGUMENT
    assert violated_fields(error_details(refused.value)) == [field]


async def test_text_that_is_not_utf8_is_refused_and_the_service_keeps_serving(mesh):
    # texts (field 1) holding the bytes ff fe: not UTF-8, which a proto3 string must be.
    raw = bytes([0x0A, 2, 0xFF, 0xFE])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.mesh}") as channel:
        call = channel.unary_unary("/meshllm.moderation.v1.ModerationService/ModerateText")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(raw, metadata=tenant_headers(), timeout=10)
        assert refused.value.code() == Code.INVALID_ARGUMENT
        assert "not a valid protobuf message" in refused.value.details()
        fine = await moderation_pb2_grpc.ModerationServiceStub(channel).ModerateText(
            m.ModerateTextRequest(texts=["all good"]), metadata=tenant_headers(), timeout=10)
    assert fine.action == m.ACTION_ALLOW


async def test_a_call_without_a_tenant_is_refused(mesh):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.options.ports.mesh}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await moderation_pb2_grpc.ModerationServiceStub(channel).ModerateText(
                m.ModerateTextRequest(texts=["hello"]), timeout=10)
    assert refused.value.code() == Code.UNAUTHENTICATED


def tenant_headers() -> tuple:
    return ((TENANT_HEADER, "direct-test"), (POLICY_HEADER, auth_pb2.Policy().SerializeToString()))


FAILS_OPEN = auth_pb2.Policy(moderation=m.ModerationPolicy(fail_mode=m.FAIL_MODE_OPEN))


async def test_moderation_crashing_mid_stream_under_fail_open_loses_no_text_and_says_so(
        client, mesh):
    """Near the end of the module: it kills the moderation replica (and starts one again)."""
    _, key, _ = await client.new_tenant(FAILS_OPEN)
    tokens = 80
    call = client.inference.Generate(inference_pb2.GenerateRequest(
        prompt="hi", model=MODEL, sampling={"max_tokens": tokens, "seed": 0}),
        metadata=bearer(key), timeout=30)
    events, deltas = [], 0
    try:
        async for event in call:
            events.append(event)
            deltas += event.HasField("delta")
            if event.HasField("delta") and deltas == 2:  # the card number is on its way
                for process in list(mesh.moderation.values()):
                    await process.kill()
    finally:
        mesh.moderation.clear()
        replica = await mesh.add_moderation_replica()
        await mesh.wait_until_routed([replica])
    unchecked = [e for e in moderation_events(events, m.STAGE_OUTPUT) if e.unchecked]
    assert len(unchecked) == 1 and "fails open" in unchecked[0].message
    assert events[-1].finished.usage.completion_tokens == tokens
    sim = "".join(word_for(position, 0, sim_tokens(SIM_TEXT))[0] for position in range(tokens))
    restored = text_of(events).replace("[CARD_NUMBER]", CARD).replace("[EMAIL]", EMAIL)
    assert restored == sim


async def test_with_moderation_down_calls_fail_closed_by_default_and_open_when_the_policy_says(
        client, mesh):
    """Last in the module: it stops the moderation replica (and starts one again)."""
    _, closed_key, _ = await client.new_tenant(DEFAULT_POLICY)
    _, open_key, _ = await client.new_tenant(FAILS_OPEN)
    for process in list(mesh.moderation.values()):
        await mesh.supervisor.stop(process)
    mesh.moderation.clear()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream(client, closed_key, "hi", max_tokens=5)
        assert refused.value.code() == Code.UNAVAILABLE
        assert reason(refused.value) == "MODERATION_UNAVAILABLE"
        assert "fails closed" in refused.value.details()
        events = await stream(client, open_key, "hi", max_tokens=5)
        unchecked = moderation_events(events, m.STAGE_INPUT)
        assert len(unchecked) == 1 and unchecked[0].unchecked
        assert "fails open" in unchecked[0].message
        assert events[-1].finished.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    finally:
        replica = await mesh.add_moderation_replica()
        await mesh.wait_until_routed([replica])

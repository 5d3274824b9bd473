"""`meshllm admin` as an operator runs it: `python -m cli` as a real subprocess, against a real
auth replica in this process (tests/integration/auth/auth_server.py) on a SQLite file."""
import json
import re
from pathlib import Path

import pytest
from google.protobuf import duration_pb2, json_format

from meshllm.api.auth.v1 import auth_pb2
from tests.integration.auth.auth_server import running_auth
from tests.integration.cli.cli_runs import Ran, one_line_error, run_cli, succeeded

SECRET_FORM = re.compile(r"mk_live_[a-z0-9]{12}_\S+")
POLICY_JSON = {"allowed_models": ["tiny-llama"], "requests_per_minute": 60,
               "monthly_budget_micro_usd": 5000000,
               "prices": {"tiny-llama": {"input_per_1k_micro_usd": 100,
                                         "output_per_1k_micro_usd": 200}}}
POLICY_YAML = """\
allowed_models: [tiny-llama, other-llama]
max_tokens_per_request: 512
tokens_per_minute: 100000
moderation_strictness: MODERATION_STRICTNESS_HIGH
data_region: eu-west
label_limits:
  - {key: team, value: search, monthly_budget_micro_usd: 1000000}
"""



@pytest.fixture
async def auth(tmp_path):
    async with running_auth(f"sqlite:///{tmp_path / 'auth.db'}") as replica:
        yield replica


@pytest.fixture
def meshllm(auth, tmp_path):
    """Runs `meshllm <args>` in tmp_path, pointed at the replica with its admin key."""
    async def run(*args: str, api_key: str | None = auth.admin_key) -> Ran:
        env = {"MESHLLM_ENDPOINT": f"127.0.0.1:{auth.port}"}
        if api_key is not None:
            env["MESHLLM_API_KEY"] = api_key
        return await run_cli(args, tmp_path, env,
                             drop_env=("MESHLLM_API_KEY", "MESHLLM_ENDPOINT"))
    return run




def written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_a_key_secret_is_printed_once_at_creation_and_never_listed_then_revoked(meshllm):
    created = succeeded(await meshllm("admin", "tenants", "create", "acme", "--name", "Acme"))
    assert "Created tenant acme (Acme), policy version 1." in created.out
    listed = json.loads(succeeded(await meshllm("admin", "tenants", "list", "--json")).out)
    assert {t["id"] for t in listed["tenants"]} == {"dev", "acme"}
    assert "Acme" in succeeded(await meshllm("admin", "tenants", "get", "acme")).out

    made = succeeded(await meshllm("admin", "keys", "create", "acme", "--name", "laptop"))
    secrets = SECRET_FORM.findall(made.out)
    assert len(secrets) == 1, made.out  # printed once, clearly marked, with how to send it
    assert "SECRET, shown only now" in made.out and "authorization: Bearer" in made.out
    key_id = secrets[0].split("_")[2]

    keys = json.loads(succeeded(await meshllm("admin", "keys", "list", "acme", "--json")).out)
    assert [(k["id"], k["name"], k["role"]) for k in keys["keys"]] == [
        (key_id, "laptop", "API_KEY_ROLE_CLIENT")]
    table = succeeded(await meshllm("admin", "keys", "list", "acme")).out
    assert key_id in table and "active" in table
    assert secrets[0] not in table + json.dumps(keys)

    revoked = succeeded(await meshllm("admin", "keys", "revoke", key_id))
    assert f"Revoked key {key_id} of tenant acme" in revoked.out
    keys = json.loads(succeeded(await meshllm("admin", "keys", "list", "acme", "--json")).out)
    assert keys["keys"][0]["revoke_time"]


async def test_policy_set_from_json_or_yaml_round_trips_through_policy_get_json(meshllm,
                                                                                 tmp_path):
    succeeded(await meshllm("admin", "tenants", "create", "acme"))
    from_json = written(tmp_path / "policy.json", json.dumps(POLICY_JSON))
    assert "now version 2" in succeeded(
        await meshllm("admin", "policy", "set", "acme", "--file", str(from_json))).out
    got = succeeded(await meshllm("admin", "policy", "get", "acme", "--json")).out
    assert json_format.Parse(got, auth_pb2.Policy()) == json_format.ParseDict(
        POLICY_JSON, auth_pb2.Policy())

    from_yaml = written(tmp_path / "policy.yaml", POLICY_YAML)
    assert "now version 3" in succeeded(
        await meshllm("admin", "policy", "set", "acme", "--file", str(from_yaml))).out
    got = succeeded(await meshllm("admin", "policy", "get", "acme", "--json")).out
    assert json_format.Parse(got, auth_pb2.Policy()).data_region == "eu-west"

    # What `get --json` prints, `set --file` reads back unchanged.
    again = written(tmp_path / "got.json", got)
    assert "now version 4" in succeeded(
        await meshllm("admin", "policy", "set", "acme", "--file", str(again))).out
    assert succeeded(await meshllm("admin", "policy", "get", "acme", "--json")).out == got
    shown = succeeded(await meshllm("admin", "policy", "get", "acme")).out
    assert "version 4" in shown and "MODERATION_STRICTNESS_HIGH" in shown


async def test_usage_is_empty_then_shows_a_settled_call_in_dollars(meshllm, auth, tmp_path):
    policy = written(tmp_path / "policy.json", json.dumps(POLICY_JSON))
    succeeded(await meshllm("admin", "tenants", "create", "acme", "--policy-file", str(policy)))
    empty = succeeded(await meshllm("admin", "usage", "acme")).out
    assert "No calls recorded for tenant acme" in empty
    assert "Monthly budget $5.00: $0.00 spent or reserved" in empty
    assert json.loads(succeeded(await meshllm("admin", "usage", "acme", "--json")).out)[
        "rows"] == []

    await auth.usage.Settle(auth_pb2.SettleRequest(
        request_id="r1", tenant_id="acme", model="tiny-llama", replica="generation-1",
        prompt_tokens=1000, completion_tokens=500, outcome="stop", labels={"team": "search"},
        total=duration_pb2.Duration(seconds=1)))
    # 1000 prompt tokens at 100 and 500 generated at 200 micro-USD per 1k: 200 micro-USD.
    table = succeeded(await meshllm("admin", "usage", "acme")).out
    row = next(line for line in table.splitlines() if "tiny-llama" in line)
    assert [cell.strip() for cell in row.split("│")[1:6]] == [
        "tiny-llama", "1", "1000", "500", "$0.0002"], table
    usage = json.loads(succeeded(await meshllm("admin", "usage", "acme", "--json")).out)
    assert usage["rows"][0]["cost_micro_usd"] == "200"  # raw micro-USD (proto3 JSON int64)
    assert usage["budget_micro_usd"] == "5000000"
    by_team = succeeded(await meshllm("admin", "usage", "acme", "--by-label", "team")).out
    assert "Label team" in by_team and "search" in by_team
    other_month = succeeded(await meshllm("admin", "usage", "acme", "--period", "2001-01")).out
    assert "No calls recorded for tenant acme in 2001-01" in other_month


BAD_POLICY_FILES = {
    "not-json": ("bad.json", '{"allowed_models": ', "is not valid JSON"),
    "not-yaml": ("bad.yaml", "allowed_models: [tiny\n", "is not valid YAML"),
    "unknown-field": ("typo.json", '{"alowed_models": ["tiny-llama"]}', 'named "alowed_models"'),
    "wrong-type": ("wrong.yml", "requests_per_minute: lots\n", "requests_per_minute"),
    "not-a-mapping": ("list.yaml", "- tiny-llama\n", "must hold a mapping"),
    "empty": ("empty.yaml", "", "is empty"),
}


async def test_a_bad_policy_file_is_one_line_naming_the_file_and_exit_2(meshllm, tmp_path):
    succeeded(await meshllm("admin", "tenants", "create", "acme"))
    for case, (name, text, problem) in BAD_POLICY_FILES.items():
        path = written(tmp_path / name, text)
        for command in (("policy", "set", "acme", "--file"), ("tenants", "create", "beta",
                                                               "--policy-file")):
            line = one_line_error(await meshllm("admin", *command, str(path)), 2)
            assert str(path) in line and problem in line, (case, line)
    missing = one_line_error(await meshllm("admin", "policy", "set", "acme", "--file",
                                           "nowhere.json"), 2)
    assert "policy file nowhere.json does not exist" in missing
    assert "beta" not in succeeded(await meshllm("admin", "tenants", "list", "--json")).out


async def test_refused_calls_are_one_line_with_code_message_and_reason_and_exit_1(meshllm,
                                                                                   auth):
    succeeded(await meshllm("admin", "tenants", "create", "acme"))
    client = await auth.admin.CreateApiKey(auth_pb2.CreateApiKeyRequest(
        tenant_id="acme", role=auth_pb2.API_KEY_ROLE_CLIENT))
    denied = one_line_error(await meshllm("admin", "tenants", "list", api_key=client.secret), 1)
    assert denied.startswith("error: PERMISSION_DENIED: ") and "(reason " in denied
    unknown = one_line_error(await meshllm("admin", "tenants", "get", "nobody"), 1)
    assert unknown == "error: NOT_FOUND: tenant 'nobody' does not exist (reason NOT_FOUND)"
    bad_month = one_line_error(await meshllm("admin", "usage", "acme", "--period", "2026-13"), 1)
    assert bad_month.startswith("error: INVALID_ARGUMENT: period must be a month as YYYY-MM")
    assert "reason INVALID_PERIOD" in bad_month
    unreachable = one_line_error(await meshllm("--endpoint", "127.0.0.1:1", "admin", "tenants",
                                               "list"), 1)
    assert unreachable.startswith("error: UNAVAILABLE: ")


async def test_without_a_key_the_cli_uses_the_local_mesh_key_file_or_says_how_to_give_one(
        meshllm, auth, tmp_path):
    missing = one_line_error(await meshllm("admin", "tenants", "list", api_key=None), 2)
    assert "MESHLLM_API_KEY" in missing and ".meshllm/run/dev-api-key" in missing
    key_file = tmp_path / ".meshllm" / "run" / "dev-api-key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(auth.admin_key + "\n")  # as `make up` keeps it
    listed = json.loads(succeeded(await meshllm("admin", "tenants", "list", "--json",
                                                api_key=None)).out)
    assert [tenant["id"] for tenant in listed["tenants"]] == ["dev"]

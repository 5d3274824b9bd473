"""The CLI's pure parts: dollars from micro-USD, and policies read from JSON and YAML files."""
import pytest

from cli.errors import InputError, one_line
from cli.money import dollars
from cli.policy_file import read_policy
from meshllm.api.auth.v1 import auth_pb2


@pytest.mark.parametrize("micro_usd, shown", [
    (0, "$0.00"), (5_000_000, "$5.00"), (1_500_000, "$1.50"), (200, "$0.0002"),
    (1, "$0.000001"), (1_234_567_890, "$1,234.56789"), (-2_500_000, "-$2.50"),
    (2**63 - 1, "$9,223,372,036,854.775807"),
])
def test_micro_usd_is_shown_as_exact_dollars_with_at_least_cents(micro_usd, shown):
    assert dollars(micro_usd) == shown


EXPECTED = auth_pb2.Policy(
    allowed_models=["tiny-llama"], requests_per_minute=60, monthly_budget_micro_usd=5_000_000,
    prices={"tiny-llama": auth_pb2.ModelPrice(input_per_1k_micro_usd=100,
                                              output_per_1k_micro_usd=200)},
    moderation_strictness=auth_pb2.MODERATION_STRICTNESS_HIGH)
AS_JSON = ('{"allowed_models": ["tiny-llama"], "requests_per_minute": 60, '
           '"monthly_budget_micro_usd": "5000000", "moderation_strictness": '
           '"MODERATION_STRICTNESS_HIGH", "prices": {"tiny-llama": '
           '{"input_per_1k_micro_usd": 100, "output_per_1k_micro_usd": 200}}}')
AS_YAML = """\
allowed_models: [tiny-llama]
requests_per_minute: 60
monthly_budget_micro_usd: 5000000
moderation_strictness: MODERATION_STRICTNESS_HIGH
prices:
  tiny-llama: {input_per_1k_micro_usd: 100, output_per_1k_micro_usd: 200}
"""


@pytest.mark.parametrize("name, text", [("p.json", AS_JSON), ("p.yaml", AS_YAML),
                                        ("p.yml", AS_YAML), ("policy", AS_JSON)])
def test_json_and_yaml_files_with_proto_field_names_read_as_the_same_policy(tmp_path, name,
                                                                             text):
    (tmp_path / name).write_text(text)
    assert read_policy(tmp_path / name) == EXPECTED


def test_an_empty_mapping_is_a_policy_without_limits(tmp_path):
    (tmp_path / "open.json").write_text("{}")
    assert read_policy(tmp_path / "open.json") == auth_pb2.Policy()


@pytest.mark.parametrize("name, text, problem", [
    ("p.json", '{"allowed_models": [', "is not valid JSON: Expecting value: line 1"),
    ("p.yaml", "prices: {tiny: [\n", "is not valid YAML"),
    ("p.json", '{"colour": "blue"}', 'has no field named "colour"'),
    ("p.yaml", "requests_per_minute: [60]\n", "requests_per_minute"),
    ("p.yaml", "moderation_strictness: FIERCE\n", "FIERCE"),
    ("p.yaml", "just a string\n", "must hold a mapping of policy fields"),
    ("p.yaml", "# nothing but a comment\n", "is empty; write {} for a policy without limits"),
])
def test_a_file_that_is_no_policy_is_refused_in_one_line_naming_the_file(tmp_path, name, text,
                                                                        problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as refused:
        read_policy(path)
    message = str(refused.value)
    assert message.startswith(f"policy file {path} ") and problem in message
    assert one_line(message) == message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match=f"policy file {tmp_path / 'nope.json'} does not exist"):
        read_policy(tmp_path / "nope.json")

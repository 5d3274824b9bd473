"""A tenant's moderation policy: the mesh's defaults, a tenant's own rules over them, and
what auth refuses when an admin sets one."""
import pytest

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.moderation_policy import (DEFAULT_WINDOW_TOKENS, ModerationRules,
                                       check_moderation_policy, fails_open, window_tokens)


def test_the_default_policy_redacts_personal_data_and_secrets_flags_injection_blocks_harm():
    rules = ModerationRules(auth_pb2.Policy())
    for stage in (m.STAGE_INPUT, m.STAGE_OUTPUT):
        assert rules.action_for(m.CATEGORY_PERSONAL_DATA, stage, 1.0) == m.ACTION_REDACT
        assert rules.action_for(m.CATEGORY_SECRETS, stage, 1.0) == m.ACTION_REDACT
        assert rules.action_for(m.CATEGORY_PROMPT_INJECTION, stage, 0.9) == m.ACTION_FLAG
        assert rules.action_for(m.CATEGORY_VIOLENCE, stage, 0.9) == m.ACTION_BLOCK
        assert rules.action_for(m.CATEGORY_HATE, stage, 0.9) == m.ACTION_BLOCK
    assert not fails_open(auth_pb2.Policy())
    assert window_tokens(auth_pb2.Policy()) == DEFAULT_WINDOW_TOKENS


def test_a_score_below_the_threshold_is_allowed_and_strictness_moves_the_threshold():
    assert ModerationRules(auth_pb2.Policy()).action_for(
        m.CATEGORY_VIOLENCE, m.STAGE_OUTPUT, 0.4) == m.ACTION_ALLOW
    strict = ModerationRules(auth_pb2.Policy(
        moderation_strictness=auth_pb2.MODERATION_STRICTNESS_HIGH))
    assert strict.action_for(m.CATEGORY_VIOLENCE, m.STAGE_OUTPUT, 0.4) == m.ACTION_BLOCK
    lenient = ModerationRules(auth_pb2.Policy(
        moderation_strictness=auth_pb2.MODERATION_STRICTNESS_LOW))
    assert lenient.action_for(m.CATEGORY_VIOLENCE, m.STAGE_OUTPUT, 0.7) == m.ACTION_ALLOW


def test_a_tenant_rule_overrides_one_category_at_one_stage_and_keeps_the_rest():
    policy = auth_pb2.Policy(moderation=m.ModerationPolicy(
        rules=[m.CategoryRule(category=m.CATEGORY_PERSONAL_DATA, stage=m.STAGE_OUTPUT,
                              action=m.ACTION_BLOCK),
               m.CategoryRule(category=m.CATEGORY_VIOLENCE, action=m.ACTION_FLAG,
                              threshold=0.9)],
        fail_mode=m.FAIL_MODE_OPEN, blocklist=["Zorp"], window_tokens=4))
    rules = ModerationRules(policy)
    assert rules.action_for(m.CATEGORY_PERSONAL_DATA, m.STAGE_OUTPUT, 1.0) == m.ACTION_BLOCK
    assert rules.action_for(m.CATEGORY_PERSONAL_DATA, m.STAGE_INPUT, 1.0) == m.ACTION_REDACT
    assert rules.action_for(m.CATEGORY_VIOLENCE, m.STAGE_INPUT, 0.8) == m.ACTION_ALLOW
    assert rules.action_for(m.CATEGORY_VIOLENCE, m.STAGE_INPUT, 0.95) == m.ACTION_FLAG
    assert fails_open(policy) and rules.blocklist == ("zorp",) and window_tokens(policy) == 4


@pytest.mark.parametrize("policy, field", [
    (m.ModerationPolicy(rules=[m.CategoryRule(category=0, action=m.ACTION_BLOCK)]),
     "moderation.rules[0].category"),
    (m.ModerationPolicy(rules=[m.CategoryRule(category=m.CATEGORY_HATE, action=9)]),
     "moderation.rules[0].action"),
    (m.ModerationPolicy(rules=[m.CategoryRule(category=m.CATEGORY_HATE, threshold=1.5)]),
     "moderation.rules[0].threshold"),
    (m.ModerationPolicy(fail_mode=7), "moderation.fail_mode"),
    (m.ModerationPolicy(blocklist=["  "]), "moderation.blocklist"),
    (m.ModerationPolicy(blocklist=["x" * 129]), "moderation.blocklist"),
    (m.ModerationPolicy(window_tokens=-1), "moderation.window_tokens"),
    (m.ModerationPolicy(window_tokens=100_000), "moderation.window_tokens"),
])
def test_a_policy_moderation_cannot_enforce_is_refused_naming_the_field(policy, field):
    problem = check_moderation_policy(policy, "moderation")
    assert problem is not None and problem[0] == field, problem


def test_a_valid_moderation_policy_passes():
    assert check_moderation_policy(m.ModerationPolicy(
        rules=[m.CategoryRule(category=m.CATEGORY_SECRETS, action=m.ACTION_BLOCK)],
        blocklist=["acme-internal"], window_tokens=32), "moderation") is None

"""A tenant's moderation policy as every service reads it: the mesh's defaults filled in.

The policy travels inside the tenant's `meshllm.auth.v1.Policy` (its `moderation` field), which
Envoy's ext_authz puts in the x-meshllm-policy-bin header. Auth validates it when an admin sets
it (`check_moderation_policy`); the router reads what it needs for the stream (windows, fail
mode, whether output is moderated at all); the moderation service decides each finding's
action (`ModerationRules.action_for`)."""
import functools
import re
from dataclasses import dataclass

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.moderation.v1 import moderation_pb2 as m

HARMFUL = (m.CATEGORY_VIOLENCE, m.CATEGORY_SELF_HARM, m.CATEGORY_SEXUAL, m.CATEGORY_HATE,
           m.CATEGORY_ILLEGAL_ACTIVITY)
DEFAULT_ACTIONS = {
    m.CATEGORY_PERSONAL_DATA: m.ACTION_REDACT,
    m.CATEGORY_SECRETS: m.ACTION_REDACT,
    m.CATEGORY_PROMPT_INJECTION: m.ACTION_FLAG,
    m.CATEGORY_BLOCKLIST: m.ACTION_BLOCK,
    **{category: m.ACTION_BLOCK for category in HARMFUL},
}
"""What a tenant gets for a category its policy does not mention, at both stages."""
THRESHOLDS = {
    auth_pb2.MODERATION_STRICTNESS_LOW: 0.8,
    auth_pb2.MODERATION_STRICTNESS_MEDIUM: 0.5,
    auth_pb2.MODERATION_STRICTNESS_HIGH: 0.35,
}
"""The lowest detector score acted on, by the policy's strictness (unset is medium)."""
DEFAULT_WINDOW_TOKENS = 32
MAX_WINDOW_TOKENS = 256
MAX_BLOCKLIST_TERMS = 256
MAX_BLOCKLIST_TERM_CHARS = 128
MAX_RULES = 64
STAGES = (m.STAGE_INPUT, m.STAGE_OUTPUT)


@dataclass(frozen=True)
class Rule:
    action: int
    threshold: float


class ModerationRules:
    """The action for every (category, stage) of one tenant's policy."""

    def __init__(self, policy: auth_pb2.Policy):
        moderation = policy.moderation
        default_threshold = THRESHOLDS.get(policy.moderation_strictness, 0.5)
        self._rules = {(category, stage): Rule(action, default_threshold)
                       for category, action in DEFAULT_ACTIONS.items() for stage in STAGES}
        for rule in moderation.rules:
            stages = STAGES if rule.stage == m.STAGE_UNSPECIFIED else (rule.stage,)
            for stage in stages:
                default = self._rules[(rule.category, stage)]
                self._rules[(rule.category, stage)] = Rule(
                    rule.action or default.action, rule.threshold or default_threshold)
        self.blocklist = tuple(term.lower() for term in moderation.blocklist)

    def action_for(self, category: int, stage: int, score: float) -> int:
        """What the policy does with a finding: ALLOW below the category's threshold."""
        rule = self._rules.get((category, stage))
        if rule is None or score < rule.threshold:
            return m.ACTION_ALLOW
        return rule.action

    def threshold(self, category: int, stage: int) -> float:
        return self._rules[(category, stage)].threshold


def fails_open(policy: auth_pb2.Policy) -> bool:
    return policy.moderation.fail_mode == m.FAIL_MODE_OPEN


def window_tokens(policy: auth_pb2.Policy) -> int:
    return policy.moderation.window_tokens or DEFAULT_WINDOW_TOKENS


def check_moderation_policy(moderation: m.ModerationPolicy, field: str) -> tuple[str, str] | None:
    """(field, problem) for the first thing wrong with a moderation policy, None if valid."""
    if len(moderation.rules) > MAX_RULES:
        return f"{field}.rules", f"{field}.rules lists {len(moderation.rules)}; at most {MAX_RULES}"
    for index, rule in enumerate(moderation.rules):
        where = f"{field}.rules[{index}]"
        if rule.category not in DEFAULT_ACTIONS:
            return f"{where}.category", f"{where}.category must name a category, got {rule.category}"
        if rule.stage not in (m.STAGE_UNSPECIFIED, *STAGES):
            return f"{where}.stage", f"{where}.stage {rule.stage} is unknown"
        if rule.action not in m.Action.values():
            return f"{where}.action", f"{where}.action {rule.action} is unknown"
        if not 0.0 <= rule.threshold <= 1.0:
            return f"{where}.threshold", f"{where}.threshold must be 0 to 1, got {rule.threshold}"
    if moderation.fail_mode not in m.FailMode.values():
        return f"{field}.fail_mode", f"{field}.fail_mode {moderation.fail_mode} is unknown"
    if len(moderation.blocklist) > MAX_BLOCKLIST_TERMS:
        return f"{field}.blocklist", (f"{field}.blocklist lists {len(moderation.blocklist)} "
                                      f"terms; at most {MAX_BLOCKLIST_TERMS}")
    for term in moderation.blocklist:
        if not term.strip() or len(term) > MAX_BLOCKLIST_TERM_CHARS:
            return f"{field}.blocklist", (f"every term of {field}.blocklist must be 1 to "
                                          f"{MAX_BLOCKLIST_TERM_CHARS} characters, not blank")
    if not 0 <= moderation.window_tokens <= MAX_WINDOW_TOKENS:
        return f"{field}.window_tokens", (f"{field}.window_tokens must be 0 (the default) to "
                                          f"{MAX_WINDOW_TOKENS}, got {moderation.window_tokens}")
    return None


@functools.cache
def word_for(enum, value: int) -> str:
    """A moderation enum value as people, metrics and data files name it: CATEGORY_SELF_HARM
    → "self_harm", STAGE_INPUT → "input"; a value this code does not know is its number."""
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"
    return name.removeprefix(prefix).lower()

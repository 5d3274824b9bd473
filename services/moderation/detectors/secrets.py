"""Secrets found by format: provider keys and tokens (detect-secrets' regexes), PEM private key
blocks, and literal values assigned to a name such as `api_key` or `password`.

detect-secrets is built to scan files: its `analyze_line` consults global settings and may call
providers to verify a key. Only the plugins' compiled `denylist` regexes are used here, with
`finditer`, which also gives the span that a redaction needs."""
import re
from collections.abc import Iterator

from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

from meshllm.api.moderation.v1 import moderation_pb2
from services.moderation.findings import Finding

SECRETS = moderation_pb2.CATEGORY_SECRETS

PLUGINS: tuple[type[RegexBasedDetector], ...] = (
    AWSKeyDetector, AzureStorageKeyDetector, BasicAuthDetector, DiscordBotTokenDetector,
    GitHubTokenDetector, GitLabTokenDetector, MailchimpDetector, NpmDetector, OpenAIDetector,
    PrivateKeyDetector, PypiTokenDetector, SendGridDetector, SlackDetector, SquareOAuthDetector,
    StripeDetector, TelegramBotTokenDetector, TwilioKeyDetector,
)
"""Plugins whose formats are specific enough for prose. Left out: ArtifactoryDetector (any
"AP1..." word), the IBM and SoftLayer assignment rules (the generic rule below covers them),
IPPublicDetector (an address is not a secret), and the keyword and high-entropy plugins, which
flag git SHAs, UUIDs and base64 test data in ordinary technical text."""
SECRET_IN_GROUP = (AWSKeyDetector, BasicAuthDetector, NpmDetector)
"""Plugins whose first regex group is the secret itself (elsewhere a group is only a prefix,
such as GitHub's "ghp")."""

JWT = re.compile(r"\beyJ[A-Za-z0-9_=-]+\.eyJ[A-Za-z0-9_=-]+\.[A-Za-z0-9_=+/-]*")
"""The plugin's own regex ends lazily and would leave the signature out of the span."""

EXTRA_FORMATS: tuple[tuple[str, re.Pattern], ...] = (
    ("stripe", re.compile(r"\b(?:sk|rk)_(?:test|live)_[0-9a-zA-Z]{24,99}\b")),
    ("openai", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{40,200}")),
    ("anthropic", re.compile(r"\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{80,120}")),
    ("google", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("huggingface", re.compile(r"\bhf_[A-Za-z]{34}\b")),
    ("github-fine-grained", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{82}\b")),
)
"""Formats detect-secrets 1.5 lacks (test-mode Stripe keys, project-scoped OpenAI keys, ...)."""

PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?P<kind>(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:(?<=\n)[A-Za-z-]+: [^\n]*\n|[A-Za-z0-9+/=\s])*"
    r"(?:-----END (?P=kind)-----)?")
"""The whole block, headers (Proc-Type, DEK-Info) included. A block cut off before its END line
(a stream still arriving) runs to the end of the base64 that follows."""

SECRET_NAME = (r"(?:api[_-]?key|apikey|api[_-]?secret|access[_-]?key(?:[_-]?id)?|secret[_-]?key"
               r"|client[_-]?secret|secret|(?:access|auth|refresh|bearer|api)[_-]?token|token"
               r"|password|passwd|pwd|passphrase|private[_-]?key)")
ASSIGNED_SECRET = re.compile(
    rf"{SECRET_NAME}[\"']?\s*(?::=|=>|=|:)\s*"
    r"(?:(?P<quote>[\"'`])(?P<quoted>[^\"'`\s]{6,200})(?P=quote)|(?P<bare>[^\s\"'`,;)}\]]{8,200}))",
    re.IGNORECASE)
"""`api_key = "..."`, `"password": "..."`, `DB_PASSWORD=...`: the value is the span. The name
may end a longer one, so nothing is asked of what comes before it."""
TOLD_PASSWORD = re.compile(
    r"\b(?:password|passcode|passphrase|pwd)\s+(?:is|was)\s*:?\s*[\"']?(?P<value>\S{6,64})",
    re.IGNORECASE)
""""my password is Tr0ub4dor&3": prose that gives a password away."""
URL_CREDENTIALS = re.compile(
    r"\b[a-z][a-z0-9+.-]{0,30}://[^\s:/@]{1,256}:(?P<value>[^\s/@]{4,256})@", re.IGNORECASE)
"""The password of `scheme://user:password@host`; detect-secrets' basic-auth rule stops at
characters such as "#" or "!" that real passwords hold."""
BEARER = re.compile(r"\b(?:Bearer|Token)\s+(?P<value>[A-Za-z0-9._~+/-]{20,}=*)")

PLACEHOLDER = re.compile(
    r"^(?:[<{$%*.#/~-]|x{3,}|your|my[_-]|example|placeholder|redacted|changeme$|dummy|none$|null$|"
    r"true$|false$|undefined$|string$|secret$|password$|env\b|os\.|process\.|config\.|settings\.)",
    re.IGNORECASE)
"""Values that name or stand for a secret instead of being one: `<your-key>`, `${TOKEN}`,
`os.environ[...]`, `********`, or a path (`pwd=/home/ci/build`)."""
CODE_LIKE = re.compile(r"[()\[\]]|^[a-z_]+(?:\.[a-z_]+)*$")
"""A call or a plain identifier (`input()`, `getpass()`, `user_password`): code that reads a
secret, not a secret."""


class SecretDetector:
    """Finds secret spans in a text."""

    def __init__(self) -> None:
        # Instances only to reach each plugin's denylist; analyze_line is never called.
        self._denylists = tuple(
            (plugin.__name__.removesuffix("Detector").lower(), tuple(plugin().denylist),
             plugin in SECRET_IN_GROUP)
            for plugin in PLUGINS)

    def find(self, text: str) -> list[Finding]:
        return [*self._plugin_findings(text), *jwts(text), *extra_formats(text),
                *pem_blocks(text), *assigned_secrets(text)]

    def _plugin_findings(self, text: str) -> Iterator[Finding]:
        for name, denylist, secret_in_group in self._denylists:
            for regex in denylist:
                for match in regex.finditer(text):
                    group = 1 if secret_in_group and regex.groups and match.group(1) else 0
                    if group and PLACEHOLDER.match(match.group(1)):
                        continue  # postgres://user:password@host in a how-to
                    yield Finding(SECRETS, match.start(group), match.end(group), 1.0,
                                  f"rules/detect-secrets:{name}", "SECRET")


def jwts(text: str) -> Iterator[Finding]:
    if "eyJ" not in text:
        return
    for match in JWT.finditer(text):
        if JwtTokenDetector.is_formally_valid(match.group()):
            yield Finding(SECRETS, match.start(), match.end(), 1.0,
                          "rules/detect-secrets:jwttoken", "SECRET")


def extra_formats(text: str) -> Iterator[Finding]:
    for name, pattern in EXTRA_FORMATS:
        for match in pattern.finditer(text):
            yield Finding(SECRETS, match.start(), match.end(), 1.0, f"rules/{name}", "SECRET")


def pem_blocks(text: str) -> Iterator[Finding]:
    if "-----BEGIN" not in text:
        return
    for match in PEM_PRIVATE_KEY.finditer(text):
        end = match.end()
        while end > match.start() and text[end - 1].isspace():
            end -= 1
        yield Finding(SECRETS, match.start(), end, 1.0, "rules/pem", "SECRET")


def assigned_secrets(text: str) -> Iterator[Finding]:
    for match in ASSIGNED_SECRET.finditer(text):
        group = "quoted" if match.group("quoted") else "bare"
        if looks_like_a_literal(match.group(group), quoted=group == "quoted"):
            yield Finding(SECRETS, match.start(group), match.end(group), 0.9,
                          "rules/assignment", "SECRET")
    for match in URL_CREDENTIALS.finditer(text):
        if not PLACEHOLDER.match(match.group("value")):
            yield Finding(SECRETS, match.start("value"), match.end("value"), 0.9,
                          "rules/url-credentials", "SECRET")
    for pattern in (TOLD_PASSWORD, BEARER):
        for match in pattern.finditer(text):
            value = match.group("value").rstrip(".,;:!?\"'")
            if looks_like_a_literal(value, quoted=False):
                yield Finding(SECRETS, match.start("value"), match.start("value") + len(value),
                              0.9, "rules/assignment", "SECRET")


def looks_like_a_literal(value: str, quoted: bool) -> bool:
    if PLACEHOLDER.match(value) or len(set(value)) < 4:
        return False
    if quoted:
        return True
    # Unquoted, a word is more often a variable or prose ("reset-your-password"): ask for
    # letters mixed with digits or symbols, as passwords and keys have.
    if CODE_LIKE.search(value):
        return False
    has_letter = any(c.isalpha() for c in value)
    has_other = any(c.isdigit() or c not in "-_." and not c.isalnum() for c in value)
    return has_letter and has_other

"""Output moderation window by window: nothing leaves before it was judged whole, however the
text is split."""
import pytest

from meshllm.api.auth.v1 import auth_pb2
from meshllm.api.moderation.v1 import moderation_pb2 as m
from meshllm.moderation_policy import ModerationRules
from services.moderation.detectors.detection import RuleDetectors
from services.moderation.moderator import Moderator
from services.moderation.output_window import OutputWindow, release_point


@pytest.fixture(scope="module")
def moderator() -> Moderator:
    return Moderator(RuleDetectors().find, classifier=None)


async def released(moderator: Moderator, windows: list[str],
                   policy: auth_pb2.Policy | None = None) -> tuple[list[str], list]:
    window = OutputWindow(moderator, ModerationRules(policy or auth_pb2.Policy()))
    releases, verdicts = [], []
    for index, text in enumerate(windows):
        verdict = await window.judge(text, end=index == len(windows) - 1)
        releases.append(verdict.release)
        verdicts.append(verdict)
        if verdict.action == m.ACTION_BLOCK:
            break
    return releases, verdicts


def test_the_last_word_a_run_of_digit_groups_and_an_open_private_key_are_held():
    assert release_point("hello wor") == len("hello ")
    assert release_point("my card is 4111 1111 ") == len("my card is ")
    assert release_point("my iban GB82 WEST 1234 ") == len("my iban ")
    text = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEow "
    assert release_point(text) == len("key: ")
    closed = text + "abc\n-----END RSA PRIVATE KEY-----\nok "
    assert release_point(closed) == len(closed)
    assert release_point("nothing ends here") == len("nothing ends ")


@pytest.mark.parametrize("windows, secret_parts", [
    (["My card is 4111 ", "1111 11", "11 1111", " thanks, bye", ""],
     ["4111", "1111"]),
    (["Write to ja", "ne.doe@exa", "mple.com today", " please", ""],
     ["jane", "doe@", "example"]),
    (["call +1 650", " 253 00", "00 now", ""], ["650", "253"]),
])
async def test_personal_data_split_across_windows_never_leaves_unredacted(
        moderator, windows, secret_parts):
    releases, verdicts = await released(moderator, windows)
    text = "".join(releases)
    for part in secret_parts:
        assert part not in text, (part, releases)
    assert "[" in text, releases
    found = [v for verdict in verdicts for v in verdict.decisions]
    assert any(d.finding.category == m.CATEGORY_PERSONAL_DATA and d.action == m.ACTION_REDACT
               for d in found)


async def test_benign_text_is_released_as_it_was_sent_once_its_words_are_complete(moderator):
    windows = ["The mesh ", "streams tok", "ens to the client.", ""]
    releases, verdicts = await released(moderator, windows)
    assert "".join(releases) == "".join(windows)
    assert releases[:2] == ["The mesh ", "streams "]
    assert all(verdict.action == m.ACTION_ALLOW for verdict in verdicts)


async def test_a_block_ends_at_the_window_that_holds_the_violation_and_releases_nothing_of_it(
        moderator):
    policy = auth_pb2.Policy(moderation=m.ModerationPolicy(blocklist=["project zorp"]))
    windows = ["The plan ", "is called ", "Project Zo", "rp and more ", "text", ""]
    releases, verdicts = await released(moderator, windows, policy)
    assert verdicts[-1].action == m.ACTION_BLOCK and len(verdicts) == 4
    assert verdicts[-1].release == ""
    assert "Zo" not in "".join(releases)

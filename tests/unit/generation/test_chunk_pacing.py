"""The chunk policy: the gap grows with the replica's open streams up to a cap, and a
stream's end is never held back."""
import time

import pytest

from services.generation.chunk_pacing import ChunkPacer


def pacer(open_streams: int, messages_per_second: float = 300, max_delay: float = 0.05):
    return ChunkPacer(messages_per_second, max_delay, open_streams=lambda: open_streams)


def test_one_stream_waits_less_than_a_token_takes_on_cpu():
    assert pacer(1).gap() == pytest.approx(1 / 300)


def test_the_gap_grows_with_open_streams_up_to_the_cap():
    assert pacer(6).gap() == pytest.approx(0.02)
    assert pacer(15).gap() == pytest.approx(0.05)
    assert pacer(500).gap() == 0.05


def test_the_second_delta_never_waits_it_completes_the_first_word():
    assert pacer(15).stream(max_tokens=1000).wait_after(1, time.monotonic()) == 0.0


def test_a_stream_waits_out_the_gap_from_when_its_delta_went_out():
    pacing = pacer(15).stream(max_tokens=1000)
    sent = time.monotonic()
    pacing.wait_after(1, sent - 1.0)  # the first delta, a second ago
    assert pacing.wait_after(1, sent) == pytest.approx(0.05, abs=0.005)
    assert pacing.wait_after(1, sent - 0.04) == pytest.approx(0.01, abs=0.005)


def test_a_stream_about_to_reach_max_tokens_does_not_wait_a_whole_gap():
    pacing = pacer(15).stream(max_tokens=12)
    start = time.monotonic() - 0.1
    pacing.wait_after(1, start)             # first token at -100 ms
    wait = pacing.wait_after(10, time.monotonic())  # ten more in 100 ms: 10 ms a token
    assert wait <= 0.011  # one token to go: about one token's time, not 50 ms


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError):
        ChunkPacer(0, 0.05, open_streams=lambda: 1)

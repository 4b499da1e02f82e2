"""The hybrid logical clock: never backwards, whatever the Pi's wall clock does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.clock import HybridClock, Timestamp

WALL = st.integers(0, 2_000_000_000_000)
STEP = st.one_of(
    st.tuples(st.just("tick"), WALL),
    st.tuples(st.just("observe"), WALL, st.builds(Timestamp, WALL, st.integers(0, 50), st.just("laser-1"))),
    st.tuples(st.just("reboot"), WALL),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=60))
def test_clock_is_monotonic_across_reboots_and_backward_wall_clock_jumps(steps):
    clock = HybridClock("intake-1")
    saved = clock.last  # what the store persists on every write
    previous = clock.last
    for step in steps:
        if step[0] == "reboot":
            clock = HybridClock("intake-1", last=saved)
            continue
        now = clock.tick(step[1]) if step[0] == "tick" else clock.observe(step[2], step[1]).timestamp
        assert now > previous
        previous = saved = now


@settings(max_examples=200, deadline=None)
@given(WALL, st.integers(0, 10), st.integers(-10_000, 10_000))
def test_observed_event_happens_before_the_next_local_event(remote_wall, counter, offset):
    clock = HybridClock("laser-1", max_drift_ms=60_000)
    remote = Timestamp(remote_wall, counter, "intake-1")
    seen = clock.observe(remote, remote_wall + offset)
    assert (seen.timestamp.wall_ms, seen.timestamp.counter) > (remote_wall, counter)
    assert clock.tick(0) > seen.timestamp


def test_remote_clock_far_in_the_future_is_clamped_and_reported():
    clock = HybridClock("laser-1", max_drift_ms=60_000)
    seen = clock.observe(Timestamp(5_000_000_000_000, 0, "intake-1"), 1_795_000_000_000)
    assert seen.clamped
    assert seen.ahead_ms == 5_000_000_000_000 - 1_795_000_000_000
    assert "ahead" in seen.detail
    assert clock.last.wall_ms == 1_795_000_000_000 + 60_000


def test_pi_booting_in_1970_still_stamps_after_its_last_event():
    before = HybridClock("intake-1")
    last = before.tick(1_795_000_000_000)
    after_reboot = HybridClock("intake-1", last=last)
    assert after_reboot.tick(0) > last


def test_one_node_far_ahead_is_clamped_but_two_agreeing_say_our_clock_is_behind():
    """A Pi that booted an hour behind (no RTC): one peer an hour ahead may be the one with the bad
    clock (clamped); two agree, so ours is behind, and our stamps follow the line's time from
    then on, so our new events never sort before what the others did meanwhile."""
    from edge.clock import DEFAULT_MAX_DRIFT_MS, HybridClock, Timestamp

    hour = 3_600_000
    wall = 1_795_000_000_000 - hour  # ours
    clock = HybridClock("transfer-1")
    seen = clock.observe(Timestamp(wall + hour, 0, "laser-1"), wall)
    assert seen.clamped and clock.last.wall_ms == wall + DEFAULT_MAX_DRIFT_MS and clock.offset_ms == 0
    seen = clock.observe(Timestamp(wall + hour + 500, 0, "printer-1"), wall + 10)
    assert clock.offset_ms == hour  # the second largest lead (laser-1's; printer-1 leads by hour + 490)
    assert not seen.clamped and clock.last.wall_ms == wall + hour + 500
    later = clock.tick(wall + 5_000)  # five seconds on, by our own (wrong) wall clock
    assert later.wall_ms == wall + 5_000 + hour > wall + hour + 500
    # the wall clock is set right (NTP): new stamps from the peers lead by nothing any more
    right = wall + hour + 60_000
    clock.observe(Timestamp(right, 0, "laser-1"), right)
    clock.observe(Timestamp(right, 0, "printer-1"), right)
    assert clock.offset_ms == 0 and clock.tick(right + 1000).wall_ms == right + 1000


def test_our_own_stamps_relayed_back_say_nothing_of_our_offset():
    from edge.clock import HybridClock, Timestamp

    clock = HybridClock("laser-1")
    wall = 1_795_000_000_000
    clock.observe(Timestamp(wall + 7_200_000, 0, "laser-1"), wall)
    clock.observe(Timestamp(wall + 7_200_000, 0, "intake-1"), wall)
    assert clock.offset_ms == 0

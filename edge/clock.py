"""Hybrid logical clock (Kulkarni et al. 2014): (wall ms, counter, node).

A Pi in the trailer has no RTC: it may boot in 1970, or with yesterday's time, and NTP
may jump it later. The HLC keeps event order right anyway: a timestamp never goes below
the last one issued or seen, whatever the wall clock does. The store saves `last` on every
write, so the guarantee survives a reboot.

Pure: the caller passes the wall time (`wall_ms`) in; nothing here reads a clock or a file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: A remote timestamp more than this far ahead of our wall clock is clamped (1 minute).
DEFAULT_MAX_DRIFT_MS = 60_000
WARN_EVERY_S = 60.0


@dataclass(frozen=True, order=True)
class Timestamp:
    """One HLC reading. Orders by (wall_ms, counter, node); JSON form is a 3-item list."""

    wall_ms: int
    counter: int
    node: str

    def to_json(self) -> list[Any]:
        return [self.wall_ms, self.counter, self.node]

    @classmethod
    def from_json(cls, value: Any) -> Timestamp:
        """Parse `[wall_ms, counter, node]`; raises ValueError on anything else."""
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise ValueError("an HLC timestamp is [wall_ms, counter, node]")
        wall, counter, node = value
        if (not isinstance(wall, int) or isinstance(wall, bool) or wall < 0
                or not isinstance(counter, int) or isinstance(counter, bool) or counter < 0
                or not isinstance(node, str)):
            raise ValueError(f"not an HLC timestamp: {value!r}")
        return cls(wall, counter, node)

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.counter}@{self.node}"


ZERO = Timestamp(0, 0, "")


@dataclass(frozen=True)
class Observation:
    """What receiving a remote timestamp did: the new local reading, and any clamp applied."""

    timestamp: Timestamp
    clamped: bool = False
    ahead_ms: int = 0

    @property
    def detail(self) -> str:
        if not self.clamped:
            return ""
        return f"remote clock {self.ahead_ms} ms ahead of ours; clamped"


class HybridClock:
    """The clock of one node. `tick` stamps a local event, `observe` merges a remote one."""

    def __init__(self, node: str, last: Timestamp | None = None, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS):
        self.node = node
        self.max_drift_ms = max_drift_ms
        self._wall = last.wall_ms if last else 0
        self._counter = last.counter if last else 0
        self._warned: dict[str, float] = {}  # remote node -> when its clamped clock was last told
        self._ahead: dict[str, int] = {}  # remote node -> how far ahead of our wall clock its last stamp was
        self.offset_ms = 0  # what the line agrees our wall clock is behind by (0: it is not)

    @property
    def last(self) -> Timestamp:
        """The latest reading issued or observed; persist this to survive a reboot."""
        return Timestamp(self._wall, self._counter, self.node)

    def tick(self, wall_ms: int) -> Timestamp:
        """A timestamp for a local event, strictly above every earlier reading."""
        wall_ms += self.offset_ms
        if wall_ms > self._wall:
            self._wall, self._counter = wall_ms, 0
        else:
            self._counter += 1
        return self.last

    def observe(self, remote: Timestamp, wall_ms: int) -> Observation:
        """Merge a received timestamp; one too far ahead of `wall_ms` is clamped and reported.

        Clamping means we do not drag our clock more than `max_drift_ms` ahead of our own
        wall clock because of one node with a bad clock; the remote event keeps its stamp.

        But when at least two other nodes are that far ahead, it is our clock that is behind (a
        Pi booted with no RTC, from the time it last saved): we take the offset they agree on
        (the second largest), and our own stamps run on from the line's time, so our new events
        are never ordered before what the others did meanwhile.
        """
        self._ahead[remote.node] = remote.wall_ms - wall_ms
        if remote.node != self.node:
            self.offset_ms = agreed_offset(self._ahead, self.node, self.max_drift_ms)
        wall_ms += self.offset_ms
        limit = wall_ms + self.max_drift_ms
        remote_wall, remote_counter = remote.wall_ms, remote.counter
        clamped = remote_wall > limit
        ahead = remote_wall - wall_ms if clamped else 0
        if clamped:
            now = time.monotonic()
            if now - self._warned.get(remote.node, -WARN_EVERY_S) >= WARN_EVERY_S:  # not once per event
                self._warned[remote.node] = now
                log.warning("clock of node %s is %d ms ahead of ours; clamping its timestamps (told once a "
                            "minute)", remote.node, ahead)
            remote_wall, remote_counter = limit, 0
        top = max(self._wall, remote_wall, wall_ms)
        if top == self._wall and top == remote_wall:
            self._counter = max(self._counter, remote_counter) + 1
        elif top == self._wall:
            self._counter += 1
        elif top == remote_wall:
            self._counter = remote_counter + 1
        else:
            self._counter = 0
        self._wall = top
        return Observation(self.last, clamped, ahead)


def agreed_offset(ahead: dict[str, int], me: str, max_drift_ms: int) -> int:
    """How far behind the line our wall clock is, by what two other nodes agree on: the second
    largest lead of their latest stamps, when it is beyond `max_drift_ms`; else 0."""
    leads = sorted((v for n, v in ahead.items() if n != me), reverse=True)
    return leads[1] if len(leads) >= 2 and leads[1] > max_drift_ms else 0

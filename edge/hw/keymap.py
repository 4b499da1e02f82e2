"""Key codes of a keyboard-emulating scanner -> the text it meant, whatever the host's layout.

A USB scanner in keyboard mode sends the key codes a US keyboard would need to type the code
(with Shift for `A`, `$`, `:` ...). The console's own keymap (AZERTY, QWERTZ in a French or
German trailer) would turn those into other characters, so the scanner is grabbed and its
codes are decoded here against the US table, which is what the scanner assumed.

Linux `struct input_event` is `{struct timeval time; __u16 type; __u16 code; __s32 value}`:
native `llHHi`, 24 bytes on a 64-bit Pi OS, 16 on a 32-bit one (`l` follows the platform, as
the kernel's `__kernel_ulong_t` does). Pure: no file, no thread.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

INPUT_EVENT = struct.Struct("llHHi")
EVIOCGRAB = 0x40044590  # _IOW('E', 0x90, int): exclusive access, keys no longer reach the console

EV_KEY = 1
RELEASE, PRESS, REPEAT = 0, 1, 2
KEY_ENTER, KEY_KPENTER = 28, 96
KEY_LEFTSHIFT, KEY_RIGHTSHIFT = 42, 54
KEY_CAPSLOCK = 58
SHIFTS = frozenset({KEY_LEFTSHIFT, KEY_RIGHTSHIFT})
CHORD_MODIFIERS = frozenset({29, 97, 56, 100, 125, 126})  # Ctrl, Alt, Meta (left, right)
LOCKS = frozenset({69, 70})  # NumLock, ScrollLock: the keypad is read as digits either way


def _row(first: int, plain: str, shifted: str) -> dict[int, tuple[str, str]]:
    return {first + i: (p, s) for i, (p, s) in enumerate(zip(plain, shifted, strict=True))}


# US layout: key code -> (without Shift, with Shift). Codes from linux/input-event-codes.h.
US_KEYS: dict[int, tuple[str, str]] = {
    **_row(2, "1234567890-=", "!@#$%^&*()_+"),
    15: ("\t", "\t"),
    **_row(16, "qwertyuiop[]", "QWERTYUIOP{}"),
    **_row(30, "asdfghjkl;'`", 'ASDFGHJKL:"~'),
    **_row(43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
    55: ("*", "*"),
    57: (" ", " "),
    **_row(71, "789-456+1230.", "789-456+1230."),
    98: ("/", "/"),
    117: ("=", "="),
    121: (",", ","),
}


class Typed(NamedTuple):
    """One code ended by Enter: its text, or why it cannot be trusted (`reason` + `detail`)."""

    text: str
    reason: str | None = None
    detail: str = ""


class KeyboardDecoder:
    """Key events in, finished codes out. Presses type, releases only matter for modifiers,
    auto-repeats are ignored. A key with no US character (F1, an arrow, Ctrl+anything) spoils
    the whole code: it is returned with reason `unmapped_key`, never with the key left out,
    because a carrier code missing one character can be another carrier's code."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self.shift: set[int] = set()
        self.chord: set[int] = set()
        self.reset()

    def reset(self) -> None:
        """Forget a half-typed code and held keys (the scanner was unplugged mid-code)."""
        self.chars: list[str] = []
        self.reason: str | None = None
        self.detail = ""
        self.shift.clear()
        self.chord.clear()
        self.caps = False

    def event(self, type_: int, code: int, value: int) -> Typed | None:
        """Feed one input_event; returns a `Typed` when it ended a code."""
        if type_ != EV_KEY:
            return None
        if code in SHIFTS or code in CHORD_MODIFIERS:
            held = self.shift if code in SHIFTS else self.chord
            if value == PRESS:
                held.add(code)
            elif value == RELEASE:
                held.discard(code)
            return None
        if value != PRESS:
            return None
        if code in (KEY_ENTER, KEY_KPENTER):
            return self._finish()
        if code == KEY_CAPSLOCK:
            self.caps = not self.caps
        elif code not in LOCKS:
            self._type(code)
        return None

    def _type(self, code: int) -> None:
        pair = US_KEYS.get(code)
        if pair is None or self.chord:
            self._spoil("unmapped_key", f"key code {code}" + (" with Ctrl/Alt/Meta held" if self.chord else ""))
            return
        char = pair[1] if self.shift else pair[0]
        if self.caps and char.isalpha():
            char = char.swapcase()
        if len(self.chars) < self.limit:
            self.chars.append(char)
        else:
            self._spoil("too_long", f"more than {self.limit} characters before Enter")

    def _spoil(self, reason: str, detail: str) -> None:
        if self.reason is None:
            self.reason, self.detail = reason, detail

    def _finish(self) -> Typed:
        typed = Typed("".join(self.chars), self.reason, self.detail)
        self.chars, self.reason, self.detail = [], None, ""
        return typed

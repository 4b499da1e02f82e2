"""GPIO devices on gpiozero: outputs with a declared safe state, inputs, safety circuits.

Devices never pick pins themselves: the `Board` hands them a gpiozero pin factory, so a test
swaps in gpiozero's MockFactory and the code under test is the code that runs on the Pi.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from edge.config import HardwareConfig

log = logging.getLogger(__name__)
FACTORY_NAMES = ("lgpio", "rpigpio", "pigpio", "native", "mock")


class HardwareError(Exception):
    """A device could not be set up (pin taken, port missing, library absent)."""


def make_pin_factory(name: str | None) -> Any:
    """The gpiozero pin factory named by GPIOZERO_PIN_FACTORY, else by config, else gpiozero's default.

    The environment wins so a technician or a test can override a station file without editing it.
    """
    chosen = os.environ.get("GPIOZERO_PIN_FACTORY") or name or None
    if chosen is None or chosen == "default":
        from gpiozero import Device

        Device.ensure_pin_factory()
        return Device.pin_factory
    found = list(entry_points(group="gpiozero_pin_factories", name=chosen))
    if not found:
        raise HardwareError(f"unknown pin factory {chosen!r} (known: {', '.join(FACTORY_NAMES)})")
    try:
        return found[0].load()()
    except Exception as exc:  # the library raises anything from ImportError to OSError off a Pi
        raise HardwareError(f"pin factory {chosen!r} cannot start here: {exc}") from exc


def is_mock(factory: Any) -> bool:
    return type(factory).__name__.startswith("Mock")


class Output:
    """A digital output (conveyor, laser enable, gripper valve) with a declared safe state."""

    def __init__(self, config: HardwareConfig, factory: Any):
        from gpiozero import DigitalOutputDevice

        self.name = config.name
        self.safe_state = bool(config.safe_state)
        self.device = DigitalOutputDevice(config.pin, active_high=config.active_high,
                                          initial_value=self.safe_state, pin_factory=factory)

    @property
    def value(self) -> bool:
        return bool(self.device.value)

    def set(self, value: bool) -> None:
        self.device.value = bool(value)

    def safe(self) -> None:
        """Drive the output to its safe state; safe to call from any thread, any number of times."""
        if not self.device.closed:
            self.device.value = self.safe_state

    def status(self) -> dict[str, Any]:
        return {"type": "digital_output", "value": self.value, "safe": self.value == self.safe_state}

    def close(self) -> None:
        self.safe()
        self.device.close()


class Input:
    """A digital input (part present sensor, button); changes are posted as events."""

    def __init__(self, config: HardwareConfig, factory: Any, on_change: Callable[[str, bool], None]):
        from gpiozero import DigitalInputDevice

        self.name = config.name
        self.device = DigitalInputDevice(config.pin, pull_up=config.pull_up,
                                         bounce_time=config.bounce_ms / 1000 or None, pin_factory=factory)
        self.device.when_activated = lambda: on_change(self.name, True)
        self.device.when_deactivated = lambda: on_change(self.name, False)

    @property
    def value(self) -> bool:
        return bool(self.device.value)

    def status(self) -> dict[str, Any]:
        return {"type": "digital_input", "value": self.value}

    def close(self) -> None:
        self.device.close()


class SafetyCircuit:
    """A normally-closed safety loop (emergency stop, door interlock).

    Healthy means the contact is closed and pulls the pin away from its pull; a pressed button
    or a cut wire opens the loop, so the pin reads its pull level and the circuit is tripped.
    `on_trip` runs in gpiozero's callback thread: it must drive outputs safe directly.
    """

    def __init__(self, config: HardwareConfig, factory: Any, on_trip: Callable[[str, bool], None]):
        from gpiozero import DigitalInputDevice

        self.name = config.name
        self.type = config.type
        self.device = DigitalInputDevice(config.pin, pull_up=config.pull_up,
                                         bounce_time=config.bounce_ms / 1000 or None, pin_factory=factory)
        if is_mock(factory):
            # A mock board is wired healthy; tests open the loop with pin.drive_high()/drive_low().
            pin = factory.pin(config.pin)
            (pin.drive_low if config.pull_up else pin.drive_high)()
        self.device.when_deactivated = lambda: on_trip(self.name, True)
        self.device.when_activated = lambda: on_trip(self.name, False)

    @property
    def tripped(self) -> bool:
        return not self.device.is_active

    def status(self) -> dict[str, Any]:
        return {"type": self.type, "tripped": self.tripped}

    def close(self) -> None:
        self.device.close()

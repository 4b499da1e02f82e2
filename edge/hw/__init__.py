"""The hardware seam: pins (gpiozero), serial ports (pyserial), cameras, scanners."""

from edge.hw.board import Board, SafetyInterlock
from edge.hw.gpio import HardwareError

__all__ = ["Board", "HardwareError", "SafetyInterlock"]

"""fabrique-edge node runtime (station-agnostic)."""

__version__ = "0.1.0"

"""Host side of every serial device: own framed protocol, GRBL, Marlin; simulators."""

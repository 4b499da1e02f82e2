"""Station kinds: one module per kind, named by the station file's `[station] kind`."""

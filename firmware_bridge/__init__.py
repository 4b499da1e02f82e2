"""Host side of every serial device in the trailer; usable alone (never imports edge or stations).

* ``protocol`` / ``link``: the framed, reliable protocol to our own boards (firmware in ``firmware/``)
* ``grbl``: GRBL 1.1 streaming with character counting (lasers)
* ``marlin``: numbered, checksummed streaming with resends (printers)
* ``sim``: simulators on pseudo-terminals, a noise proxy, the firmware in simavr

Command line: ``python -m firmware_bridge --help``. Reference: docs/firmware.md.
"""

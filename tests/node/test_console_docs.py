"""docs/console.md lists exactly the commands the node's registry has."""

from __future__ import annotations

from trailer import EXAMPLES, ROOT

from edge.config import load_station
from edge.node import Node


def test_console_docs_carry_the_generated_command_table():
    table = Node(load_station(EXAMPLES / "transfer.toml")).commands.markdown()
    doc = (ROOT / "docs" / "console.md").read_text()
    begin = doc.index("-->\n", doc.index("<!-- BEGIN GENERATED")) + 4
    end = doc.index("<!-- END GENERATED -->")
    assert doc[begin:end] == table, "docs/console.md is stale: regenerate its command table"
    assert "`drive <device> <value>` | at the station" in table

"""Child of the power-cut test: appends events forever, printing each id once it is durable.

Run as `python crash_child.py DATA_DIR ROUND`; the parent kills it with SIGKILL at random.
"""

from __future__ import annotations

import sys

from edge.store import Store

STEPS = ("created", "step_started", "step_done", "completed")


def main(data_dir: str, round_no: str) -> None:
    with Store.open(data_dir, "crash-1") as store:
        n = 0
        while True:
            job = f"J{round_no}-{n}"
            for kind in STEPS:
                data = {"product": "stand", "route": ["intake"]} if kind == "created" else {"step": "intake"}
                ev = store.append(job, kind, "intake", data)
                print(ev.id, flush=True)  # acknowledged: append() returned, so it is on disk
            n += 1
            if n % 3 == 0:
                store.archive_closed()
                late = store.append(f"J{round_no}-{n - 2}", "note", "intake", {"text": "late"})  # archived job
                print(late.id, flush=True)
            if n % 4 == 0:
                store.outbox_ack(e.id for e in store.outbox_peek(6))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

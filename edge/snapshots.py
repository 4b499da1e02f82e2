"""Camera snapshots kept with their job, under a disk budget.

    <data_dir>/files/jobs/<job>/inspection-1.jpg            what the camera saw (its sha256 in the ledger)
    <data_dir>/files/jobs/<job>/inspection-1-annotated.jpg  the same with regions, values and verdict

A snapshot is written whole or not at all (a temporary file, fsync, rename), so a power cut
never leaves a JPEG whose hash the ledger does not know. When the snapshots take more than the
budget, those of closed jobs go first, oldest first; the snapshots of open jobs are never
removed (a job still on the line may need its picture for a redo or a dispute).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from edge.storage import write_atomic

log = logging.getLogger(__name__)
JPEG_QUALITY = 90
SUFFIXES = (".jpg", ".jpeg")


def jpeg(frame: Any, quality: int = JPEG_QUALITY) -> bytes:
    """An RGB uint8 array as JPEG bytes."""
    import cv2
    import numpy as np

    image = np.asarray(frame)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not encode a {image.shape} frame as JPEG")
    return data.tobytes()


class Snapshots:
    """The snapshots under one node's files directory. What they take is counted once, then kept
    up to date as snapshots are written, so a capture rescans the folder only when over budget."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.total: int | None = None  # bytes the snapshots take, once counted

    def save(self, job: str, images: Mapping[str, Any]) -> dict[str, str]:
        """Write each image as `jobs/<job>/<name>`; returns {relative path: sha256 of the JPEG}."""
        if not job or "/" in job or job.startswith(".") or "\0" in job:
            raise ValueError(f"job id {job[:40]!r} cannot name a folder")
        folder = self.root / "jobs" / job
        folder.mkdir(parents=True, exist_ok=True)
        out: dict[str, str] = {}
        for name, frame in images.items():
            if "/" in name or not name.endswith(SUFFIXES):
                raise ValueError(f"snapshot name {name!r} must be a plain .jpg file name")
            data = jpeg(frame)
            path = folder / name
            replaced = path.stat().st_size if path.exists() else 0
            write_atomic(path, data, tmp_name=f".{name}.tmp")
            if self.total is not None:
                self.total += len(data) - replaced
            out[f"jobs/{job}/{name}"] = hashlib.sha256(data).hexdigest()
        return out

    def files(self) -> list[tuple[str, Path, os.stat_result]]:
        """Every snapshot: (job, path, stat)."""
        out = []
        jobs = self.root / "jobs"
        if not jobs.is_dir():
            return out
        for folder in jobs.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.suffix.lower() in SUFFIXES and not path.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):  # rotated out meanwhile
                        out.append((folder.name, path, path.stat()))
        return out

    def usage(self) -> int:
        return sum(st.st_size for _job, _path, st in self.files())

    def rotate(self, budget: int, keep: Collection[str]) -> list[Path]:
        """Remove snapshots of jobs not in `keep`, oldest first, until they all fit in `budget`
        bytes; returns what was removed."""
        removed: list[Path] = []
        if self.total is not None and self.total <= budget:
            return removed
        files = self.files()
        total = self.total = sum(st.st_size for _job, _path, st in files)
        if total <= budget:
            return removed
        for _job, path, st in sorted((f for f in files if f[0] not in keep), key=lambda f: f[2].st_mtime):
            if total <= budget:
                break
            path.unlink(missing_ok=True)
            total -= st.st_size
            removed.append(path)
        self.total = total
        if total > budget:
            log.warning("snapshots of open jobs alone take %d bytes, more than the %d-byte budget", total, budget)
        return removed

"""Cameras behind one seam: frames are RGB uint8 numpy arrays (height, width, 3), whatever the source.

    picamera2   the Pi's camera (CSI), imported only when a station opens it (the `[pi]` extra)
    v4l2        a USB camera through V4L2 (OpenCV), `path` = /dev/video0 or /dev/v4l/by-id/...
    file        a directory of images, served in name order, cycling (tests, a bench, no sensor)

The simulated world (edge.sim.world) puts a camera of its own in the board's place: frames
rendered from the part at the station.

`capture()` may be called from several threads (a camera scanner, the inspection station's
worker): one capture at a time. A capture that fails raises HardwareError with the reason; a
camera that disappeared (unplugged) is tried again at the next capture.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from edge.config import HardwareConfig
from edge.hw.gpio import HardwareError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
V4L2_FLUSH = 4  # frames a V4L2 driver may hold queued: grabbed and dropped so the frame is fresh


class Camera:
    """What every source gives: `capture()` (a fresh RGB frame), `status()`, `open()`, `close()`."""

    source = "camera"

    def __init__(self, config: HardwareConfig):
        self.name = config.name
        self.resolution = config.resolution
        self.frames = 0
        self.error: str | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Raise HardwareError if the camera cannot be used (a device fault at start, not a crash)."""

    def capture(self) -> Any:
        with self._lock:
            try:
                frame = self._capture()
            except HardwareError as exc:
                self.error = str(exc)
                raise
            except Exception as exc:  # a driver's own error: the same for the caller
                self.error = f"[hardware.{self.name}] {type(exc).__name__}: {exc}"
                raise HardwareError(self.error) from exc
            self.error = None
            self.frames += 1
            return frame

    def _capture(self) -> Any:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        return {"type": "camera", "source": self.source, "frames": self.frames, "error": self.error,
                **self._details()}

    def _details(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def rgb_array(image: Any) -> Any:
    """A PIL image -> an RGB uint8 array."""
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.uint8)


class FileCamera(Camera):
    """Returns the images of a directory in name order, cycling; the inspection seam off a Pi."""

    source = "file"

    def __init__(self, config: HardwareConfig):
        super().__init__(config)
        self.path = Path(config.path or ".")
        self.index = 0

    def open(self) -> None:
        if not self.path.is_dir():
            raise HardwareError(f"[hardware.{self.name}] path: {self.path} is not a directory of images")

    def images(self) -> list[Path]:
        try:
            return sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise HardwareError(f"[hardware.{self.name}] {self.path}: {exc.strerror or exc}") from exc

    def _capture(self) -> Any:
        from PIL import Image, UnidentifiedImageError

        images = self.images()
        if not images:
            raise HardwareError(f"[hardware.{self.name}] no images in {self.path}")
        image = images[self.index % len(images)]
        self.index += 1
        try:
            with Image.open(image) as img:
                return rgb_array(img)
        except (OSError, UnidentifiedImageError) as exc:
            raise HardwareError(f"[hardware.{self.name}] cannot read {image.name}: {exc}") from exc

    def _details(self) -> dict[str, Any]:
        return {"path": str(self.path)}


class V4L2Camera(Camera):
    """A USB camera through V4L2 (OpenCV's capture). Unplugged: the capture fails with the reason
    and the device is opened again at the next one."""

    source = "v4l2"

    def __init__(self, config: HardwareConfig):
        super().__init__(config)
        self.path = str(config.path or "/dev/video0")
        self.cap: Any = None

    def open(self) -> None:
        self._open()

    def _open(self) -> None:
        import cv2

        if not Path(self.path).exists():
            raise HardwareError(f"[hardware.{self.name}] {self.path}: no such camera (unplugged?)")
        cap = cv2.VideoCapture(self.path, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise HardwareError(f"[hardware.{self.name}] {self.path}: cannot open it as a V4L2 camera")
        width, height = self.resolution
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.cap = cap

    def _capture(self) -> Any:
        import cv2

        if self.cap is None:
            self._open()
        for _ in range(V4L2_FLUSH):  # frames queued before we asked are stale: the part moved since
            self.cap.grab()
        ok, frame = self.cap.read()
        if not ok or frame is None:
            self.cap.release()
            self.cap = None
            raise HardwareError(f"[hardware.{self.name}] {self.path}: no frame (unplugged?)")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def _details(self) -> dict[str, Any]:
        return {"path": self.path, "open": self.cap is not None}

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class PiCamera(Camera):
    """picamera2, imported only when a station actually asks for it (it exists only on a Pi)."""

    source = "picamera2"

    def __init__(self, config: HardwareConfig):
        super().__init__(config)
        self.camera: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise HardwareError(f"[hardware.{self.name}] picamera2 is not installed "
                                f"(pip install 'fabrique-edge[pi]' on the Pi): {exc}") from exc
        try:
            self.camera = Picamera2()
            # libcamera's "BGR888" is R, G, B in memory: the array is RGB, as the seam promises
            self.camera.configure(self.camera.create_still_configuration(
                main={"size": tuple(self.resolution), "format": "BGR888"}))
            self.camera.start()
        except Exception as exc:  # no sensor on the ribbon, or another process has it
            self.camera = None
            raise HardwareError(f"[hardware.{self.name}] the Pi camera did not start: {exc}") from exc

    def _capture(self) -> Any:
        if self.camera is None:
            self.open()
        return self.camera.capture_array("main")

    def _details(self) -> dict[str, Any]:
        return {"open": self.camera is not None}

    def close(self) -> None:
        if self.camera is not None:
            self.camera.close()
            self.camera = None


SOURCES: dict[str, type[Camera]] = {"picamera2": PiCamera, "v4l2": V4L2Camera, "file": FileCamera}


def make_camera(config: HardwareConfig) -> Camera:
    return SOURCES[config.source or "picamera2"](config)

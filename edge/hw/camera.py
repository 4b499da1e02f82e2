"""Camera sources behind one interface: picamera2 on a Pi, a directory of images anywhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.config import HardwareConfig
from edge.hw.gpio import HardwareError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class FileCamera:
    """Returns the images of a directory in name order, cycling; the inspection seam off a Pi."""

    def __init__(self, config: HardwareConfig):
        self.name = config.name
        self.path = Path(config.path or ".")
        self.index = 0

    def open(self) -> None:
        if not self.path.is_dir():
            raise HardwareError(f"[hardware.{self.name}] path: {self.path} is not a directory of images")

    def frames(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def capture(self) -> Any:
        """The next image as a PIL image."""
        from PIL import Image

        frames = self.frames()
        if not frames:
            raise HardwareError(f"[hardware.{self.name}] no images in {self.path}")
        frame = frames[self.index % len(frames)]
        self.index += 1
        with Image.open(frame) as img:
            return img.copy()

    def status(self) -> dict[str, Any]:
        return {"type": "camera", "source": "file", "path": str(self.path)}

    def close(self) -> None:
        pass


class PiCamera:
    """picamera2, imported only when a station actually asks for it (it exists only on a Pi)."""

    def __init__(self, config: HardwareConfig):
        self.name = config.name
        self.resolution = config.resolution
        self.camera: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise HardwareError(f"[hardware.{self.name}] picamera2 is not installed "
                                f"(pip install 'fabrique-edge[pi]' on the Pi): {exc}") from exc
        self.camera = Picamera2()
        self.camera.configure(self.camera.create_still_configuration(main={"size": self.resolution}))
        self.camera.start()

    def capture(self) -> Any:
        return self.camera.capture_image("main")

    def status(self) -> dict[str, Any]:
        return {"type": "camera", "source": "picamera2", "open": self.camera is not None}

    def close(self) -> None:
        if self.camera is not None:
            self.camera.close()
            self.camera = None


def make_camera(config: HardwareConfig) -> FileCamera | PiCamera:
    return FileCamera(config) if config.source == "file" else PiCamera(config)

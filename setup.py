"""fabrique-edge: offline-first edge controller for a mobile production line."""

from pathlib import Path

from setuptools import find_packages, setup


def shared(folder: str) -> list[tuple[str, list[str]]]:
    """Files an installed node needs beside the code (units, broker configs, examples, docs),
    installed under <prefix>/share/fabrique-edge/ (edge.share finds them there)."""
    out: dict[str, list[str]] = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            out.setdefault(f"share/fabrique-edge/{path.parent}", []).append(str(path))
    return sorted(out.items())


setup(
    name="fabrique-edge",
    version="0.1.0",
    description="Offline-first edge controller for a production line in a truck trailer",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["edge", "edge.*", "firmware_bridge", "firmware_bridge.*", "stations", "stations.*"]),
    package_data={"firmware_bridge": ["firmware/*.c", "firmware/*.h", "firmware/Makefile", "sim/*.c"],
                  "edge.web": ["static/*"]},  # the live views' CSS, JS and icon
    install_requires=[
        "gpiozero>=2.0",
        "paho-mqtt>=2.0",
        "pyserial>=3.5",
        "tinydb>=4.8",
        "cryptography>=41",
        "pynacl>=1.5",
        "orjson>=3.9",
        "segno>=1.5",
        "zxing-cpp>=2.2",
        "pillow>=10",
        "numpy>=1.24",  # camera frames are arrays (edge.hw.camera, edge.vision)
        "opencv-python-headless>=4.6",  # inspection: colour, geometry, V4L2 cameras (edge.vision)
        "rich>=13",  # edge demo's live view of the line (edge.sim.view)
        "Hershey-Fonts>=2.1",  # the laser's single-stroke font (firmware_bridge.engrave)
        "tomli-w>=1.0",  # the simulated line writes station files
        "prompt_toolkit>=3.0",  # the operator's console: line editing on the serial port and in `edge console`
        "starlette>=0.37",  # `edge web`: the live views' pages, JSON API and Server-Sent Events (edge.web.app)
        "uvicorn>=0.30",  # `edge web`: the ASGI server behind them (plain: no uvloop or httptools to build on a Pi)
    ],
    extras_require={
        "pi": ["picamera2", "lgpio"],
        # playwright drives Debian's /usr/bin/chromium in tests/web (never `playwright install`)
        "dev": ["pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100", "ruff>=0.5", "pexpect>=4.8", "playwright>=1.40"],
    },
    data_files=shared("systemd") + shared("examples") + shared("docs") + [("share/fabrique-edge", ["README.md"])],
    entry_points={"console_scripts": ["edge = edge.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Hardware",
    ],
)

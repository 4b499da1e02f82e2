"""`edge inspection calibrate`: measure each body colour on this station's own camera and light."""

from __future__ import annotations

import argparse
import datetime
import sys
import tomllib
from pathlib import Path
from typing import Any

from edge.cli import arg, command, group, load_station_and_line
from edge.config import ConfigError, HardwareConfig, LineConfig
from edge.storage import write_atomic

group("inspection", "the inspection camera: calibrate its colours")

MIN_TOLERANCE = 4.0  # ΔE: below this, camera noise and a slightly different spool would fail good parts
SPREAD_FACTOR = 4.0  # the tolerance suggested is this many times the frames' own spread, at least


@command(
    "inspection calibrate", "measure reference parts of each colour and write the station's calibration file",
    arg("--config", required=True, metavar="FILE", help="the inspection station's file (its camera, its "
        "[station] calibration path)"),
    arg("--colour", action="append", metavar="NAME", help="calibrate only this colour (repeatable; default: "
        "every colour a product of the line is ordered in)"),
    arg("--frames", type=int, default=10, metavar="N", help="frames measured per colour (default 10)"),
    arg("--images", metavar="DIR", help="measure the images of DIR/<colour>/ (pictures taken earlier) "
        "instead of the camera"),
    arg("--output", metavar="FILE", help="write here instead of the station's [station] calibration file"),
    arg("--yes", action="store_true", help="do not wait for Enter before each colour (the parts are "
        "already there, or --images)"),
    description="Calibrate the inspection's colours on this station's camera and light. For each colour,\n"
                "put a reference part of that colour in a carrier tray under the camera and press Enter:\n"
                "the command takes --frames frames, finds the tray's QR label in each, measures the body\n"
                "colour (CIELAB, white-balanced on the label) where the line file's colour_region says,\n"
                "and prints the mean, its spread and a suggested tolerance (ΔE*ab): the line file's,\n"
                "widened to 4x the spread on a noisy camera, at most half the distance to the nearest\n"
                "other colour. The values are merged\n"
                "into the calibration file (other colours kept) that the station reads at start.\n\n"
                "Stop the node first (systemctl stop fabrique-edge): one process at a time has the camera.\n\n"
                "examples:\n"
                "  edge inspection calibrate --config /etc/fabrique-edge/station.toml\n"
                "  edge inspection calibrate --config station.toml --colour red --colour blue\n"
                "  edge inspection calibrate --config station.toml --images ./reference --yes",
)
def calibrate(args: argparse.Namespace) -> int:
    loaded = load_station_and_line(args.config)
    if isinstance(loaded, ConfigError):
        return 2
    config, line = loaded
    options = config.station.options
    if config.station.kind != "inspection" or options is None:
        print(f"{args.config}: a {config.station.kind} station; calibration is for an inspection station",
              file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else options.calibration
    if output is None:
        print(f"{args.config}: [station] has no calibration file: add calibration = \"/etc/fabrique-edge/"
              f"inspection-calibration.toml\" (or pass --output FILE)", file=sys.stderr)
        return 2
    if not 1 <= args.frames <= 1000:
        print(f"--frames: {args.frames} is out of range 1..1000", file=sys.stderr)
        return 2
    regions = colour_regions(line)
    colours = args.colour or sorted(regions)
    unknown = [c for c in colours if c not in regions]
    if unknown:
        print(f"--colour: {', '.join(unknown)}: no product of the line is ordered in "
              f"{'it' if len(unknown) == 1 else 'them'} with a colour_region (colours: "
              f"{', '.join(sorted(regions)) or 'none'})", file=sys.stderr)
        return 2
    from stations.inspection import camera_of

    device = camera_of(options, {n: d.type for n, d in config.hardware.items()})
    measured: dict[str, dict[str, Any]] = {}
    for colour in colours:
        camera = open_camera(config.hardware.get(device), args.images, colour)
        if isinstance(camera, str):
            print(camera, file=sys.stderr)
            return 2
        try:
            if not args.yes and not args.images:
                try:
                    answer = input(f"Put a {colour} reference part in its tray under the camera, then Enter "
                                   f"(s Enter to skip): ")
                except EOFError:
                    print("\nno answer (end of input): nothing written; --yes measures without asking",
                          file=sys.stderr)
                    return 1
                if answer.strip().lower() == "s":
                    continue
            result = measure_colour(camera, regions[colour], args.frames, colour)
        finally:
            camera.close()
        if isinstance(result, str):
            print(result, file=sys.stderr)
            return 1
        measured[colour] = result
    if not measured:
        print("nothing measured", file=sys.stderr)
        return 1
    previous = read_previous(output)
    entries = {**previous, **measured}
    suggest(entries, line)
    print_table(entries, measured)
    write(output, entries, device)
    print(f"wrote {output} ({', '.join(sorted(measured))}); restart the node to use it")
    return 0


def colour_regions(line: LineConfig) -> dict[str, Any]:
    """colour -> the Layout of a product ordered in that colour (where the colour is measured)."""
    from stations.inspection import product_layout

    out: dict[str, Any] = {}
    for product in line.products.values():
        spec = product.inspection
        option = product.options.get(spec.colour_option) if spec is not None else None
        if spec is None or spec.colour_region is None or option is None:
            continue
        for colour in option.choices:
            out.setdefault(colour, product_layout(product))
    return out


def open_camera(device: HardwareConfig | None, images: str | None, colour: str) -> Any:
    """The station's camera, or a folder of pictures of `colour`; a string says why not."""
    from edge.hw.camera import make_camera
    from edge.hw.gpio import HardwareError

    if images:
        folder = Path(images) / colour
        device = HardwareConfig(name=f"images/{colour}", type="camera", source="file", path=folder)
    elif device is None:
        return "the station declares no camera device"
    camera = make_camera(device)
    try:
        camera.open()
    except HardwareError as exc:
        return f"{exc} (is the node running? stop it first: systemctl stop fabrique-edge)"
    return camera


def measure_colour(camera: Any, layout: Any, frames: int, colour: str) -> dict[str, Any] | str:
    """Mean Lab of `frames` frames and their spread; a string says why it could not be measured."""
    import numpy as np

    from edge import vision
    from edge.hw.gpio import HardwareError

    labs: list[tuple[float, float, float]] = []
    reasons: list[str] = []
    for n in range(frames):
        try:
            frame = camera.capture()
        except HardwareError as exc:
            return f"{colour}: {exc}"
        finding = vision.measure(frame, layout)
        if finding.verdict == "pass" and "lab" in finding.values:
            labs.append(tuple(float(v) for v in finding.values["lab"]))  # type: ignore[arg-type]
        else:
            reasons.append(finding.reason)
        print(f"  {colour}: frame {n + 1}/{frames}: "
              f"{'L* a* b* ' + ' '.join(f'{v:.1f}' for v in labs[-1]) if finding.verdict == 'pass' else finding.reason}",
              file=sys.stderr)
    if len(labs) < max(1, frames // 2):
        common = max(set(reasons), key=reasons.count) if reasons else "no frame"
        return f"{colour}: only {len(labs)} of {frames} frames could be measured ({common})"
    mean = np.mean(np.array(labs), axis=0)
    spread = max(vision.delta_e(mean, lab) for lab in labs)
    return {"lab": [round(float(v), 2) for v in mean], "spread": round(float(spread), 2), "frames": len(labs)}


def suggest(entries: dict[str, dict[str, Any]], line: LineConfig) -> None:
    """Each colour's suggested tolerance: the line file's (what counts as this colour), widened to
    SPREAD_FACTOR x the frames' spread on a noisy camera, at least MIN_TOLERANCE, and at most half
    the distance to the nearest other colour (so no part can pass as two colours)."""
    from edge import vision

    refs = {name: entry["lab"] for name, entry in entries.items()}
    for name, c in line.colours.items():
        refs.setdefault(name, [float(v) for v in vision.hex_to_lab(c.srgb)])
    for name, entry in entries.items():
        others = [(vision.delta_e(entry["lab"], lab), other) for other, lab in refs.items() if other != name]
        nearest, other = min(others) if others else (float("inf"), "")
        nominal = line.colours[name].tolerance if name in line.colours else MIN_TOLERANCE
        wanted = max(MIN_TOLERANCE, nominal, SPREAD_FACTOR * float(entry.get("spread", 0)))
        entry["tolerance"] = round(min(wanted, nearest / 2), 1)
        entry["nearest"] = other
        entry["nearest_delta_e"] = round(nearest, 1) if others else None


def print_table(entries: dict[str, dict[str, Any]], measured: dict[str, Any]) -> None:
    print(f"{'colour':<8} {'frames':>6} {'L*':>6} {'a*':>6} {'b*':>6} {'spread':>6} {'nearest':>14} {'tolerance':>9}")
    for name in sorted(entries):
        e = entries[name]
        near = f"{e['nearest']} {e['nearest_delta_e']}" if e.get("nearest") else "-"
        mark = "" if name in measured else "  (kept)"
        print(f"{name:<8} {e.get('frames', '-'):>6} {e['lab'][0]:>6.1f} {e['lab'][1]:>6.1f} {e['lab'][2]:>6.1f} "
              f"{e.get('spread', 0):>6.2f} {near:>14} {e['tolerance']:>9.1f}{mark}")
    too_close = [n for n in measured if entries[n]["tolerance"] < MIN_TOLERANCE]
    for name in too_close:
        print(f"warning: {name} is within {entries[name]['nearest_delta_e']} of {entries[name]['nearest']}: "
              f"the camera can hardly tell them apart (more light? another filament?)", file=sys.stderr)


def read_previous(path: Path) -> dict[str, dict[str, Any]]:
    """The colours an earlier calibration measured (kept when only some are measured again), as
    the station reads them; a file it would refuse is measured anew in full."""
    from stations.inspection import load_calibration

    if not path.exists():
        return {}
    try:
        valid = load_calibration(path)
    except ValueError as exc:
        print(f"warning: {exc}: its colours are not kept", file=sys.stderr)
        return {}
    colours = tomllib.loads(path.read_text(encoding="utf-8"))["colours"]
    return {name: dict(colours[name]) for name in valid}


def write(path: Path, entries: dict[str, dict[str, Any]], camera: str) -> None:
    import tomli_w

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = {"colours": {name: {k: v for k, v in e.items() if v is not None} for name, e in sorted(entries.items())}}
    text = (f"# Inspection calibration, written by `edge inspection calibrate` on {now} (camera [hardware.{camera}]).\n"
            f"# lab: mean CIELAB of the reference part; spread: the largest ΔE of a frame from it; tolerance:\n"
            f"# the ΔE*ab the station allows (edit it if you must; calibrating again replaces it).\n"
            + tomli_w.dumps(doc))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"))


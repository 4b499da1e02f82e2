"""The simulated world's parts as the inspection camera sees them: `render` draws a camera frame.

A top view of one carrier tray: a grey tray, the part's body (a rectangle in its colour, lit a
little unevenly), the tray's QR label (a white card, the symbol made with segno, exactly
`layout.label_mm` wide, with a quiet zone of four modules) and the engraving (the laser's
strokes, 0.3 mm wide, burnt: darker than a light body, a lighter grey on a dark one). The
positions are those of an `edge.vision.Layout`, so what the inspection measures is what was
drawn.

How a frame is made, in this order:

1. The tray is drawn in the label's own frame (mm, y down) at `SUPERSAMPLE` times the camera's
   pixels a mm, at least `MIN_CANVAS_PX_PER_MM`, then smoothed a little (the pixel's area).
2. It is placed in the camera's view: the part and its label centred in the frame, turned by
   `angle_deg` about the frame centre (counter-clockwise as the picture is seen), shifted by
   `offset_mm` (x right, y down) and sampled at the camera's pixels (`field_mm` is the width of
   the view, so there are `size[0] / field_mm` pixels a mm). `placement` gives that transform.
3. The light: the linear (not gamma-encoded) light is multiplied by `EXPOSURE` (the camera is
   set so the label's white is well below clipping), `light` and `tint` (per channel, r g b),
   as a dimmer lamp, a brighter one or a warm one would.
4. The lens: a Gaussian `blur` whose sigma is in mm on the part (so the same blur is the same
   defocus at any resolution).
5. The sensor: Gaussian `noise`, sigma in grey levels (0..255), from `seed`; then clipped.

`shots()` is the rendered set the tests and the benchmark judge: parts good and bad, frames
judgeable and not, each with its ground truth (what the inspection must decide), under the
named `CONDITIONS`.

Pure: no files, no camera, no logging; numbers and arrays in, an RGB uint8 array out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from edge.vision import LABEL_WHITE, Layout, Stroke, hex_to_rgb, linear_to_srgb, srgb_to_linear

#: The line's colours, nominal sRGB (the line file's `[colours.<name>] srgb` copies these).
COLOURS: dict[str, str] = {
    "black": "#1e1e1e",
    "white": "#f0f0eb",
    "red": "#c0282d",
    "blue": "#1e50b4",
    "green": "#288c3c",
}
TRAY = (105, 108, 112)  # the carrier tray's grey
QR_INK = (22, 22, 24)  # the label's printed modules
STROKE_MM = 0.3  # width of a burnt line
BODY_PAD_MM = 3.0  # the default body: the colour and engraving regions, padded this much
SHADING = 0.04  # the body's light falls off by this fraction from its left edge to its right
EXPOSURE = 0.8  # the camera's linear exposure at light 1: the label's white at about sRGB 222
SUPERSAMPLE = 2
MIN_CANVAS_PX_PER_MM = 16.0
DARK_BODY_L = 25.0  # a body darker than this (L*) shows the laser's marks lighter


def rgb_of(colour: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour by name (`COLOURS`), "#rrggbb" or an (r, g, b) tuple, as an (r, g, b) tuple."""
    if isinstance(colour, str):
        return hex_to_rgb(COLOURS.get(colour, colour))
    r, g, b = (int(c) for c in colour)
    return r, g, b


def burnt(body: tuple[int, int, int]) -> tuple[int, int, int]:
    """The colour of a laser mark on a body: a dark brown on a light body, a light grey on a dark one."""
    luminance = float(srgb_to_linear(np.array(body, dtype=np.float32)) @ np.array([0.2126, 0.7152, 0.0722]))
    if 116 * luminance ** (1 / 3) - 16 < DARK_BODY_L:
        return 132, 128, 122
    return tuple(int(round(c * 0.33)) for c in body)  # type: ignore[return-value]


def default_body(layout: Layout) -> tuple[float, float, float, float]:
    """The body when none is given: the colour and engraving regions' union, padded BODY_PAD_MM."""
    (cx, cy, cw, ch), (ex, ey, ew, eh) = layout.colour, layout.engraving
    x0, y0 = min(cx, ex) - BODY_PAD_MM, min(cy, ey) - BODY_PAD_MM
    x1, y1 = max(cx + cw, ex + ew) + BODY_PAD_MM, max(cy + ch, ey + eh) + BODY_PAD_MM
    return x0, y0, x1 - x0, y1 - y0


@lru_cache(maxsize=64)
def _modules(label: str) -> np.ndarray:
    import segno

    qr = segno.make(label, micro=False)
    return np.array([list(row) for row in qr.matrix], dtype=np.uint8)


def quiet_zone_mm(layout: Layout, label: str) -> float:
    """The width of the label's white margin around its symbol: four modules."""
    return 4 * layout.label_mm / _modules(label).shape[0]


def _extent(layout: Layout, label: str, body: tuple[float, float, float, float]) -> tuple[float, ...]:
    q = quiet_zone_mm(layout, label)
    bx, by, bw, bh = body
    return (min(-q, bx), min(-q, by), max(layout.label_mm + q, bx + bw), max(layout.label_mm + q, by + bh))


def placement(*, layout: Layout, label: str = "T01", size: tuple[int, int] = (640, 480), field_mm: float = 120.0,
              angle_deg: float = 0.0, offset_mm: tuple[float, float] = (0.0, 0.0),
              body: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The 2x3 affine transform from the label's frame (mm) to the frame's pixels (centres at
    integers) that `render` uses with the same arguments."""
    x0, y0, x1, y1 = _extent(layout, label, body or default_body(layout))
    px = size[0] / field_mm
    a = math.radians(angle_deg)
    # counter-clockwise on screen: y points down, so the usual rotation with the sign of sin flipped
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    centre_mm = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    frame_centre = np.array([size[0] / 2, size[1] / 2])  # in edge coordinates (pixel corners)
    linear = rot * px
    shift = frame_centre + np.array(offset_mm) * px - linear @ centre_mm - 0.5
    return np.hstack([linear, shift[:, None]])


def render(*, layout: Layout, label: str, colour: str | tuple[int, int, int], strokes: tuple[Stroke, ...] | None,
           size: tuple[int, int] = (640, 480), field_mm: float = 120.0, angle_deg: float = 0.0,
           offset_mm: tuple[float, float] = (0.0, 0.0), blur: float = 0.0, noise: float = 0.0, light: float = 1.0,
           tint: tuple[float, float, float] = (1.0, 1.0, 1.0), body: tuple[float, float, float, float] | None = None,
           seed: int = 0) -> np.ndarray:
    """A camera frame (RGB uint8, `size` = (width, height)) of a part in its tray; see the module
    docstring for the steps. `label` "" draws no label; `strokes` None or () draws no engraving;
    `blur` is a sigma in mm, `noise` a sigma in grey levels."""
    width, height = int(size[0]), int(size[1])
    body = body or default_body(layout)
    px = width / field_mm
    factor = max(SUPERSAMPLE, math.ceil(MIN_CANVAS_PX_PER_MM / px))
    scale = px * factor  # canvas pixels a mm
    x0, y0, x1, y1 = _extent(layout, label or "T01", body)
    margin = 2.0
    # the canvas's left/top edges on whole pixels from the label's origin, so the symbol's are too
    ox = -math.ceil((margin - x0) * scale) / scale
    oy = -math.ceil((margin - y0) * scale) / scale
    canvas = np.empty((math.ceil((y1 + margin - oy) * scale), math.ceil((x1 + margin - ox) * scale), 3), np.uint8)
    canvas[:] = TRAY

    def at(x: float, y: float) -> tuple[float, float]:  # mm -> canvas edge coordinates
        return (x - ox) * scale, (y - oy) * scale

    # the body, its light falling off a little from left to right
    rgb = rgb_of(colour)
    bx, by, bw, bh = body
    (u0, v0), (u1, v1) = at(bx, by), at(bx + bw, by + bh)
    i0, j0, i1, j1 = round(u0), round(v0), round(u1), round(v1)
    ramp = 1.0 - SHADING * np.linspace(0.0, 1.0, max(1, i1 - i0), dtype=np.float32)
    lit = srgb_to_linear(np.array(rgb, np.float32))[None, :] * ramp[:, None]
    canvas[j0:j1, i0:i1] = np.round(linear_to_srgb(lit)).astype(np.uint8)[None, :, :]

    if strokes:
        ex, ey, ew, eh = layout.engraving
        thick = max(1, round(STROKE_MM * scale))
        shift = 4  # cv2's fixed-point fraction bits
        lines = [np.round(np.array([at(ex + x, ey + eh - y) for x, y in s]) * (1 << shift) - 0.5 * (1 << shift))
                 .astype(np.int32) for s in strokes if len(s) > 1]
        cv2.polylines(canvas, lines, False, burnt(rgb), thick, cv2.LINE_AA, shift)

    if label:
        modules = _modules(label)
        q = quiet_zone_mm(layout, label)
        (u0, v0), (u1, v1) = at(-q, -q), at(layout.label_mm + q, layout.label_mm + q)
        canvas[round(v0):round(v1), round(u0):round(u1)] = hex_to_rgb(LABEL_WHITE)
        side = round(layout.label_mm * scale)
        u, v = (round(c) for c in at(0.0, 0.0))
        symbol = cv2.resize(modules, (side, side), interpolation=cv2.INTER_NEAREST).astype(bool)
        canvas[v:v + side, u:u + side][symbol] = QR_INK

    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.45 * factor)  # the area of a camera pixel
    to_frame = placement(layout=layout, label=label or "T01", size=(width, height), field_mm=field_mm,
                         angle_deg=angle_deg, offset_mm=offset_mm, body=body)
    # canvas pixel centre (i, j) is at mm (ox + (i + 0.5) / scale, oy + (j + 0.5) / scale)
    from_canvas = np.array([[1 / scale, 0.0, ox + 0.5 / scale], [0.0, 1 / scale, oy + 0.5 / scale], [0, 0, 1]])
    affine = to_frame @ from_canvas
    frame = cv2.warpAffine(canvas, affine, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=TRAY)

    gain = np.array(tint, np.float32) * np.float32(light * EXPOSURE)
    linear = _LINEAR[frame]
    linear *= gain
    if blur > 0:
        linear = cv2.GaussianBlur(linear, (0, 0), blur * px)
    out = _ENCODE[(np.clip(linear, 0.0, 1.0) * (len(_ENCODE) - 1) + 0.5).astype(np.int32)]
    if noise > 0:
        out += np.random.default_rng(seed).standard_normal(out.shape, dtype=np.float32) * np.float32(noise)
    np.clip(out + 0.5, 0, 255, out=out)
    return out.astype(np.uint8)


_LINEAR = srgb_to_linear(np.arange(256))  # sRGB level -> linear light
_ENCODE = linear_to_srgb(np.linspace(0.0, 1.0, 1 << 14, dtype=np.float32))  # linear light -> sRGB level


# ---------------------------------------------------------------- a rendered set with its ground truth

#: How a frame is taken: `render` arguments by name. The first `MODERATE` ones a good part must
#: pass under; the others no frame can be judged under.
CONDITIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "turned": {"angle_deg": 12.0, "offset_mm": (3.0, -4.0), "noise": 4.0},
    "turned back, soft": {"angle_deg": -15.0, "blur": 0.15, "noise": 5.0},
    "dimmer": {"light": 0.45, "noise": 5.0},
    "brighter": {"light": 1.2, "noise": 3.0},
    "warm light": {"tint": (1.15, 1.0, 0.75), "angle_deg": 5.0, "noise": 4.0},
    "upside down": {"angle_deg": 180.0, "offset_mm": (-3.0, 2.0), "noise": 3.0},
    "too dark": {"light": 0.08, "noise": 3.0},
    "overexposed": {"light": 1.8, "noise": 3.0},
    "too blurred": {"blur": 0.45, "noise": 3.0},
}
MODERATE = ("plain", "turned", "turned back, soft", "dimmer", "brighter", "warm light", "upside down")
NAMES = {"stand": ("François Lefèvre", "Zoë", "Jean-Luc", "Marie-Claire Dupont", "Noël", "Œdipe Roi",
                   "Amélie Poulain"),
         "keyring": ("Zoë", "Jean-Luc", "Noël", "Lucas")}
CARRIER, JOB, OTHER_CARRIER = "T03", "A7K2-20261118-0042", "T07"
LABELS = (CARRIER, JOB)  # what the inspected part's label may carry


@dataclass(frozen=True)
class Shot:
    """One frame of the rendered set and what the inspection must decide about it."""

    truth: str  # what the frame shows: "good", "wrong colour", "no label", "too dark", ...
    verdict: str  # "pass" | "reject" | "retake"
    checks: tuple[str, ...]  # the checks that may decide it ("" for a pass)
    product: str  # "stand" | "keyring"
    colour: str  # the body's
    label: str  # on the tray ("": none)
    engraved: str  # the text burnt ("": nothing)
    ordered_colour: str | None  # the order's colour (None: not checked)
    ordered_text: str  # the order's text ("": none, the area must be blank)
    condition: str  # a key of CONDITIONS
    size: tuple[int, int]
    seed: int

    def frame(self, layout: Layout, strokes: tuple[Stroke, ...] | None) -> np.ndarray:
        """The frame, given the product's layout and the toolpath of `engraved`."""
        return render(layout=layout, label=self.label, colour=self.colour, strokes=strokes, size=self.size,
                      seed=self.seed, **CONDITIONS[self.condition])


def shots(sizes: tuple[tuple[int, int], ...] = ((640, 480), (1640, 1232)), every: int = 4) -> list[Shot]:
    """The rendered set: every case at the first size; every `every`-th of each kind at the others."""
    out: list[Shot] = []
    for k, size in enumerate(sizes):
        cases = _cases(size, seed=1000 * k)
        if k:
            kinds: dict[str, list[Shot]] = {}
            for shot in cases:
                kinds.setdefault(shot.truth, []).append(shot)
            cases = [shot for group in kinds.values() for shot in group[k % every::every] or group[:1]]
        out += cases
    return out


def _cases(size: tuple[int, int], seed: int) -> list[Shot]:
    colours, stand, keyring = tuple(COLOURS), NAMES["stand"], NAMES["keyring"]
    out: list[Shot] = []

    def add(truth: str, verdict: str, checks: tuple[str, ...], colour: str, engraved: str, condition: str, *,
            product: str = "stand", label: str = CARRIER, ordered_colour: str | None = "",
            ordered_text: str | None = None) -> None:
        # by default the order is what was made: its colour and its text
        out.append(Shot(truth, verdict, checks, product, colour, label, engraved,
                        colour if ordered_colour == "" else ordered_colour,
                        engraved if ordered_text is None else ordered_text, condition,
                        size, seed + len(out)))

    for i, colour in enumerate(colours):
        for j, condition in enumerate(MODERATE):
            name = stand[(i + j) % len(stand)]
            add("good", "pass", ("",), colour, name, condition, label=JOB if (i + j) % 3 == 0 else CARRIER)
    for j, condition in enumerate(MODERATE[:3]):
        add("good", "pass", ("",), colours[j + 1], keyring[j], condition, product="keyring", ordered_colour=None)
    add("good", "pass", ("",), "white", "", "turned")  # no text ordered, none burnt
    for i, colour in enumerate(colours):
        condition, name = MODERATE[i], stand[i]
        add("wrong colour", "reject", ("colour",), colour, name, condition, ordered_colour=colours[(i + 2) % 5])
        add("missing engraving", "reject", ("engraving",), colour, "", condition, ordered_text=name)
        add("other text", "reject", ("engraving",), colour, name, MODERATE[-1 - i],
            ordered_text=stand[(i + 3) % len(stand)])
        add("other label", "retake", ("label",), colour, name, condition, label=OTHER_CARRIER)
        add("no label", "retake", ("label",), colour, name, condition, label="")
        for harsh, checks in (("too dark", ("exposure",)), ("overexposed", ("exposure",)),
                              ("too blurred", ("sharpness", "label"))):
            add(harsh, "retake", checks, colour, name, harsh)
    add("missing engraving", "reject", ("engraving",), "red", "", "turned", product="keyring",
        ordered_colour=None, ordered_text="Lucas")
    add("other text", "reject", ("engraving",), "blue", "Noël", "dimmer", product="keyring", ordered_colour=None,
        ordered_text="Lucas")
    add("text, none ordered", "reject", ("engraving",), "green", "Zoë", "plain", ordered_text="")
    return out

"""What the inspection camera sees: one frame of a finished part in its tray -> pass, reject or retake.

Pure: RGB uint8 arrays (H, W, 3) and numbers in, values out. No files, no camera, no logging.
`inspect` judges a part against what its order says (`Expected`); `measure` only measures (the
calibration command); `annotate` draws the outcome on a copy of the frame for people.

**The label is the ruler.** Every tray carries a QR label. zxing-cpp finds and decodes it on the
grayscale frame (`find_labels`) and says roughly where its symbol's corners are (whole pixels: a
fifth of a millimetre at 640x480, a millimetre or two once carried to the far end of a part).
The corners are then refined on the symbol's three finder patterns, each matched to a fraction
of a pixel, which gives the corners as printed (top-left, top-right, bottom-right,
bottom-left, whatever way the tray lies) as a parallelogram: the camera looks straight down.
The symbol is `Layout.label_mm` wide, so its corners map the label's frame (mm, origin at the
symbol's top-left corner, x along its top edge, y down its left side) onto the frame's pixels.
The `Layout` places two regions in that frame: plain body (`colour`) and the engraving area
(`engraving`). Each is cut out straightened at a fixed number of pixels a mm whatever the
camera's resolution (`LABEL_PX_PER_MM`, `COLOUR_PX_PER_MM`, `ENGRAVING_PX_PER_MM`; a finer
frame is averaged down first, not sampled), so every number below means the same at 640x480
and at 1640x1232.

**The checks, in order.** The first that fails decides. Every check still runs, so everything
that could be measured is in `Finding.values`; `Finding.regions` has the regions' pixel outlines.

1. *label found*. No QR code: **retake** "no QR label in the frame", with "(blurred? sharpness
   0.13)" when the frame's own edges are soft (`frame_sharpness` below
   `Thresholds.min_frame_sharpness`, 0.2: a defocus of about 0.35 mm or more). Several codes:
   the one `Expected.labels` names is used, otherwise the first.
2. *exposure*. The label is the white reference. Its white (`white_L`: L* of the brightest
   quarter of the symbol and 1 mm of its quiet zone) below `min_white` (35): **retake** "too
   dark". More than `max_saturated` (2%) of the pixels of the label's white, of the colour region
   or of the engraving area clipped (a channel at `CLIPPED`, 254, or more): **retake**
   "overexposed", naming the region (a clipped white makes the white balance, so the colour,
   wrong).
3. *sharpness*. How steep the label's module edges are: the 99th percentile of the gradient on
   the straightened label over its black-to-white contrast, in contrast per mm. Measured on
   the simulated camera: sharp 2.5 (640x480) to 2.9 (1640x1232); a Gaussian blur of sigma
   0.1 mm 2.1-2.3, 0.2 mm 1.5, 0.3 mm 1.2, 0.4 mm 1.07. It does not depend on the light or the
   label's angle, and hardly on the resolution once the lens is the limit. Below `min_sharpness` (1.2, a blur of about 0.28 mm, when the 0.3 mm laser
   lines start to fade into the body): **retake** "blurred".
4. *label matches*. Its text is none of `Expected.labels`: **retake** "label T07 is another
   part's (expected T03 or ...)". The wrong tray may be under the camera for a moment: the part
   is not known to be wrong.
5. *colour* (when `Expected.colour` is set). The colour region is white-balanced by the label
   (each linear channel scaled so the label's white becomes `LABEL_WHITE`: the Lab stays put
   when the light gets dimmer, brighter or warmer), turned into CIELAB (D65), and the median
   L*, a*, b* taken. ΔE*ab (CIE76) from `ColourRef.lab` above `ColourRef.tolerance`:
   **reject** "colour: ΔE 31.2 from red (tolerance 10); looks blue" (the nearest of
   `Expected.others`: "looks" within its own tolerance, "nearest ... (ΔE x)" otherwise).
6. *engraving* (when `Expected.strokes` is not None). The engraving area and `search_mm` (1 mm)
   around it, as L*, smoothed a little. The body is the area's median L*; *ink* is every pixel
   further from it than `ink_contrast` (6 L*, or four times the area's noise when that is
   more), darker or lighter: burnt PLA is darker than a light body, lighter than black. The
   expected ink is `stroke_mask(Expected.strokes)`, the laser's toolpath `stroke_mm` (0.3 mm)
   wide. It is slid over the ink, up to `search_mm` each way (the part has some play in its
   tray), to where they overlap best; there

       recall    = expected pixels with ink within `tolerance_mm` (0.4 mm)
       precision = ink pixels within `tolerance_mm` of expected ink
       F1        = 2 recall precision / (recall + precision)

   over the whole area and over columns `column_mm` (5 mm, about a letter) wide every half
   column; score = the lower of the whole's F1 and the worst column's, so one wrong or missing
   letter cannot hide in a long name. When no text was ordered (`strokes == ()`) the area must
   be blank: score = 1 - ink area / `blank_mm2` (2 mm²), at least 0. Below `min_engraving`
   (0.65): **reject** "engraving: score 0.12 < 0.65 (missing: ...)", "(wrong or incomplete:
   recall ..., precision ...)" or "(engraved where nothing was ordered: ...)". On the
   simulated line a good engraving that passes the sharpness check scores above 0.85 and an
   unrelated name below 0.5. Near misses are not caught: one look-alike letter ("Raul" for
   "Paul") scores about 0.75, a missing accent ("Lea" for "Léa") about 0.92.

A region that is not fully in the frame is a **retake** of its check ("the area is not fully in
view (72%)"). `measure` runs checks 1-3 and measures the Lab (a retake when it cannot).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

Point = tuple[float, float]
Problem = tuple[str, str, str]  # verdict, check, reason
Stroke = tuple[Point, ...]  # as firmware_bridge.engrave: mm, y up from the engraving area's bottom-left
Quad = list[list[float]]

LABEL_WHITE = "#f5f5f5"  # the label card's white: the white balance maps the measured white here
LABEL_PX_PER_MM = 6.0
LABEL_MARGIN_MM = 1.0  # the ring of the label's quiet zone cut out with the symbol
COLOUR_PX_PER_MM = 2.0
ENGRAVING_PX_PER_MM = 8.0
CLIPPED = 254  # a channel at this or above is clipped (255, and 254 for a camera's rounding)
IN_VIEW = 0.98  # at least this fraction of a region inside the frame
FRAME_WIDTH = 640  # the frame's width when its sharpness is judged without a label

# sRGB (D65) -> CIE XYZ
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_D65 = np.array([0.95047, 1.0, 1.08883])
_LUMA = _RGB_TO_XYZ[1]


# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class Layout:
    """Where things are on a part as the camera sees it, in mm, in the label's frame: origin at the
    QR symbol's top-left corner (the symbol's outer edge, quiet zone excluded), x along its top
    edge, y down its left edge (so the frame may be rotated/translated arbitrarily)."""

    label_mm: float  # side of the QR symbol
    colour: tuple[float, float, float, float]  # x, y, w, h: plain body, where the colour is measured
    engraving: tuple[float, float, float, float]  # x, y, w, h: the product's engraving area

    def __post_init__(self) -> None:
        if not self.label_mm > 0:
            raise ValueError(f"label_mm must be positive, not {self.label_mm}")
        for name in ("colour", "engraving"):
            rect = getattr(self, name)
            if len(rect) != 4 or not (rect[2] > 0 and rect[3] > 0):
                raise ValueError(f"{name} region must be x, y, w, h with a positive size, not {rect}")


@dataclass(frozen=True)
class ColourRef:
    """A body colour: the CIELAB (D65) it should measure and the ΔE*ab (CIE76) allowed."""

    name: str
    lab: tuple[float, float, float]
    tolerance: float

    @classmethod
    def of_hex(cls, name: str, srgb: str, tolerance: float = 10.0) -> ColourRef:
        """A colour from its nominal "#rrggbb" (the line file's `[colours.<name>] srgb`)."""
        L, a, b = hex_to_lab(srgb)
        return cls(name, (L, a, b), tolerance)


@dataclass(frozen=True)
class Expected:
    """What this part should be."""

    labels: tuple[str, ...]  # texts this part's label may carry (its carrier code, its job id)
    colour: ColourRef | None = None  # None: colour not checked
    strokes: tuple[Stroke, ...] | None = None  # the laser toolpath (mm, y up from the area's bottom-left); None: not checked
    others: tuple[ColourRef, ...] = ()  # the line's other colours (to say "looks blue" in a reason)

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("an inspection needs the label texts the part may carry")


@dataclass(frozen=True)
class Thresholds:
    """Where each check draws its line. The defaults suit the example line's camera (a 120 mm
    field at 640x480 or more); calibrate with `measure` on real parts."""

    min_white: float = 35.0  # label white L* below this: retake "too dark"
    max_saturated: float = 0.02  # fraction of clipped pixels in the label's white, colour or engraving region above this: retake "overexposed"
    min_sharpness: float = 1.2  # label edge steepness (contrast per mm, see the module doc) below this: retake "blurred"
    min_frame_sharpness: float = 0.2  # without a label: the frame's edge steepness (per pixel at 640 wide) below this adds "blurred?"
    min_engraving: float = 0.65  # engraving score (0..1) below this: reject
    ink_contrast: float = 6.0  # L* from the body's that makes a pixel ink (at least; 4x the area's noise if more)
    stroke_mm: float = 0.3  # width of a burnt line, for the expected ink
    tolerance_mm: float = 0.4  # ink this close to an expected stroke counts as the stroke (and the reverse)
    column_mm: float = 5.0  # the engraving is also scored in columns this wide (about a letter)
    min_column_mm2: float = 0.4  # a column's recall (precision) counts when it has this much expected ink (ink)
    search_mm: float = 1.0  # how far the engraving may sit from where the layout says (the part's play in its tray)
    blank_mm2: float = 2.0  # ink area that makes an area that should be blank score 0


@dataclass(frozen=True)
class Label:
    """A decoded QR code: its text and its symbol's corners in pixels (top-left, top-right,
    bottom-right, bottom-left as printed; pixel centres at integer coordinates)."""

    text: str
    corners: tuple[Point, Point, Point, Point]


@dataclass(frozen=True)
class Finding:
    """An inspection's outcome: the verdict, why, which check decided, and every measurement."""

    verdict: str  # "pass" | "reject" | "retake"
    reason: str  # "" on pass; a sentence naming the check and the numbers
    check: str  # which check decided: "" | "exposure" | "sharpness" | "label" | "colour" | "engraving"
    values: dict[str, Any] = field(default_factory=dict)  # every measured value, JSON-able, rounded
    regions: dict[str, Quad] = field(default_factory=dict)  # pixel quads of label / colour / engraving


# ---------------------------------------------------------------- colour

def hex_to_rgb(text: str) -> tuple[int, int, int]:
    """"#rrggbb" -> (r, g, b); ValueError on anything else."""
    digits = text.strip().removeprefix("#")
    if len(digits) != 6:
        raise ValueError(f"a colour is \"#rrggbb\", not {text!r}")
    try:
        value = int(digits, 16)
    except ValueError:
        raise ValueError(f"a colour is \"#rrggbb\", not {text!r}") from None
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


def srgb_to_linear(rgb: Any) -> np.ndarray:
    """sRGB values 0..255 (any shape) -> linear light 0..1 (float32)."""
    c = np.asarray(rgb, dtype=np.float32) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: Any) -> np.ndarray:
    """Linear light 0..1 (any shape) -> sRGB values 0..255 (float32, not rounded)."""
    c = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    return (255.0 * np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)).astype(np.float32)


_LINEAR_LUT = srgb_to_linear(np.arange(256))


def _lab_f(t: np.ndarray) -> np.ndarray:
    return np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)


def linear_to_lab(linear: Any) -> np.ndarray:
    """Linear sRGB light 0..1 (shape (..., 3)) -> CIELAB (D65), float64."""
    xyz = np.asarray(linear, dtype=np.float64) @ _RGB_TO_XYZ.T / _D65
    f = _lab_f(xyz)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def srgb_to_lab(rgb: Any) -> np.ndarray:
    """sRGB values 0..255 (shape (..., 3)) -> CIELAB (D65): white (255, 255, 255) is (100, 0, 0)."""
    return linear_to_lab(srgb_to_linear(rgb))


def hex_to_lab(text: str) -> tuple[float, float, float]:
    """"#rrggbb" -> (L*, a*, b*)."""
    L, a, b = (float(v) for v in srgb_to_lab(hex_to_rgb(text)))
    return L, a, b


def delta_e(lab1: Any, lab2: Any) -> float:
    """ΔE*ab (CIE76): the straight distance between two Lab colours."""
    return float(np.linalg.norm(np.asarray(lab1, dtype=np.float64) - np.asarray(lab2, dtype=np.float64)))


def _lightness(y: np.ndarray) -> np.ndarray:
    """Relative luminance 0..1 -> L* (float32)."""
    return (116 * _lab_f(np.asarray(y, dtype=np.float32)) - 16).astype(np.float32)


# ---------------------------------------------------------------- geometry

def stroke_mask(strokes: Iterable[Stroke], size_mm: tuple[float, float], px_per_mm: float,
                width_mm: float) -> np.ndarray:
    """The expected ink of `strokes` (mm, y up from the area's bottom-left) in an area of
    `size_mm` (w, h): a bool array of round(h * px_per_mm) rows (top row = the area's top edge)
    and round(w * px_per_mm) columns; lines `width_mm` wide with round ends."""
    cols, rows = max(1, round(size_mm[0] * px_per_mm)), max(1, round(size_mm[1] * px_per_mm))
    mask = np.zeros((rows, cols), np.uint8)
    shift = 4
    one = 1 << shift
    thick = max(1, round(width_mm * px_per_mm))
    lines = []
    for stroke in strokes:
        pts = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            continue
        u = pts[:, 0] * px_per_mm - 0.5
        v = (size_mm[1] - pts[:, 1]) * px_per_mm - 0.5
        lines.append(np.round(np.stack([u, v], axis=1) * one).astype(np.int32))
    for line in lines:
        if len(line) == 1:
            line = np.vstack([line, line])
        cv2.polylines(mask, [line], False, 1, thick, cv2.LINE_8, shift)
    return mask.astype(bool)


def _homography(label: Label, label_mm: float) -> np.ndarray:
    """Label mm -> frame pixels, from the symbol's corners."""
    src = np.array([[0, 0], [label_mm, 0], [label_mm, label_mm], [0, label_mm]], np.float32)
    return cv2.getPerspectiveTransform(src, np.array(label.corners, np.float32)).astype(np.float64)


def _quad(to_px: np.ndarray, rect: Sequence[float]) -> np.ndarray:
    x, y, w, h = rect
    pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
    return cv2.perspectiveTransform(pts[None], to_px)[0]


def _in_view(quad: np.ndarray, shape: tuple[int, ...]) -> float:
    """The fraction of the quad's area inside the frame."""
    quad = quad.astype(np.float32)
    area = cv2.contourArea(quad, oriented=True)
    if area < 0:  # both polygons the same way round
        quad, area = quad[::-1].copy(), -area
    if not area > 0:
        return 0.0
    box = np.array([[-0.5, -0.5], [shape[1] - 0.5, -0.5], [shape[1] - 0.5, shape[0] - 0.5], [-0.5, shape[0] - 0.5]],
                   np.float32)
    inside, _ = cv2.intersectConvexConvex(quad, box)
    return float(inside) / area


def _rectify(image: np.ndarray, to_px: np.ndarray, rect: Sequence[float], px_per_mm: float) -> np.ndarray:
    """The `rect` (label mm) of `image` straightened at `px_per_mm`; an image much finer than that
    is averaged down by a whole factor first, so small details are not aliased."""
    x, y, w, h = rect
    cols, rows = max(1, round(w * px_per_mm)), max(1, round(h * px_per_mm))
    # output pixel centre (i, j) is at mm (x + (i + 0.5) / ppm, y + (j + 0.5) / ppm)
    to_mm = np.array([[1 / px_per_mm, 0, x + 0.5 / px_per_mm], [0, 1 / px_per_mm, y + 0.5 / px_per_mm], [0, 0, 1]])
    out_to_frame = to_px @ to_mm
    quad = _quad(to_px, rect)
    x0 = int(max(0, math.floor(quad[:, 0].min()) - 2))
    y0 = int(max(0, math.floor(quad[:, 1].min()) - 2))
    x1 = int(min(image.shape[1], math.ceil(quad[:, 0].max()) + 3))
    y1 = int(min(image.shape[0], math.ceil(quad[:, 1].max()) + 3))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((rows, cols) + image.shape[2:], image.dtype)
    crop = image[y0:y1, x0:x1]
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    frame_px_per_mm = math.sqrt(abs(np.linalg.det(to_px[:2, :2] / to_px[2, 2])))
    factor = int(frame_px_per_mm / px_per_mm)
    if factor >= 2 and crop.shape[0] >= factor and crop.shape[1] >= factor:
        small = (crop.shape[1] // factor, crop.shape[0] // factor)
        crop = cv2.resize(crop[:small[1] * factor, :small[0] * factor], small, interpolation=cv2.INTER_AREA)
        shift = np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1]]) @ shift
    return cv2.warpPerspective(crop, shift @ out_to_frame, (cols, rows),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def _grow(rect: Sequence[float], by: float) -> tuple[float, float, float, float]:
    x, y, w, h = rect
    return x - by, y - by, w + 2 * by, h + 2 * by


# ---------------------------------------------------------------- frames and labels

def _as_rgb(frame: Any) -> np.ndarray | None:
    """The frame as a contiguous RGB uint8 array, or None when it is not an image."""
    try:
        image = np.asarray(frame)
    except Exception:
        return None
    if image.dtype.kind not in "uifb":
        return None
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.shape[0] < 1 or image.shape[1] < 1:
        return None
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        values = np.nan_to_num(image.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        image = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def find_labels(frame: Any) -> list[Label]:
    """Every QR code zxing-cpp decodes in the frame (RGB or grayscale), in the order it reports them."""
    rgb = _as_rgb(frame)
    if rgb is None or min(rgb.shape[:2]) < 21:
        return []
    return _decode(_gray(rgb))


def _decode(gray: np.ndarray) -> list[Label]:
    import zxingcpp

    found = zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.QRCode, text_mode=zxingcpp.TextMode.Plain,
                                   try_invert=False)
    labels = []
    for code in found:
        p = code.position
        # zxing's corners are whole pixels on the symbol's outer edges (pixel-corner coordinates)
        rough = np.array([(c.x - 0.5, c.y - 0.5) for c in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)],
                         np.float64)
        extra = getattr(code, "extra", None) or {}
        version = extra.get("Version") if isinstance(extra, dict) else None
        corners = _refine(gray, rough, int(version) if str(version or "").isdigit() else None)
        labels.append(Label(code.text, tuple((float(x), float(y)) for x, y in corners)))  # type: ignore[arg-type]
    return labels


FINDER_PX = 6  # pixels a module when the finder patterns are matched
FINDER_SEARCH = 2  # modules each way


def _finder_template() -> np.ndarray:
    """A finder pattern (7 x 7 modules) with its light separator, at FINDER_PX a module: 1 dark."""
    modules = np.zeros((9, 9), np.float32)
    modules[1:8, 1:8] = 1
    modules[2:7, 2:7] = 0
    modules[3:6, 3:6] = 1
    big = cv2.resize(modules, None, fx=FINDER_PX, fy=FINDER_PX, interpolation=cv2.INTER_NEAREST)
    return cv2.GaussianBlur(big, (0, 0), FINDER_PX / 4)


_FINDER = _finder_template()


def _modules(gray: np.ndarray, to_px: np.ndarray, side: float) -> int:
    """The symbol's side in modules (21, 25, ... 57) when the decoder does not say: the size whose
    timing patterns (row and column 6 between the finders, dark on even modules) alternate
    best, the smallest on a tie."""
    best, best_score = 21, -1.0
    for n in range(21, 61, 4):
        m = side / n
        idx = np.arange(8, n - 8)
        along = (idx + 0.5) * m
        at_six = np.full(idx.shape, 6.5 * m)
        pts = np.concatenate([np.stack([along, at_six], axis=1), np.stack([at_six, along], axis=1)])
        px = cv2.perspectiveTransform(pts[None], to_px)[0]
        xs = np.clip(np.round(px[:, 0]).astype(int), 0, gray.shape[1] - 1)
        ys = np.clip(np.round(px[:, 1]).astype(int), 0, gray.shape[0] - 1)
        values = gray[ys, xs].astype(np.float32)
        score = float(np.mean((values < values.mean()) == np.tile(idx % 2 == 0, 2)))
        if score > best_score + 1e-9:
            best, best_score = n, score
    return best


def _refine(gray: np.ndarray, rough: np.ndarray, version: int | None) -> np.ndarray:
    """The symbol's corners from its three finder patterns' centres, found to a fraction of a
    pixel by matching a finder pattern around where the decoder's corners put them (those are
    whole pixels: a fifth of a mm at 640 x 480, a mm or two at the far end of a part). The
    result is a parallelogram (a camera looking straight down). The rough corners when a
    finder is not where it should be."""
    side = 1.0
    src = np.array([[0, 0], [side, 0], [side, side], [0, side]], np.float32)
    to_px = cv2.getPerspectiveTransform(src, rough.astype(np.float32)).astype(np.float64)
    n = 17 + 4 * version if version else _modules(gray, to_px, side)
    m = side / n
    found = []
    half = 4.5 + FINDER_SEARCH  # modules: the window around a finder's centre
    for cx, cy in ((3.5, 3.5), (n - 3.5, 3.5), (3.5, n - 3.5)):
        rect = ((cx - half) * m, (cy - half) * m, 2 * half * m, 2 * half * m)
        window = _rectify(gray, to_px, rect, FINDER_PX / m).astype(np.float32)
        if window.shape[0] < _FINDER.shape[0] or window.std() < 1:
            return rough
        score = cv2.matchTemplate(255 - window, _FINDER, cv2.TM_CCOEFF_NORMED)
        j, i = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[j, i] < 0.5:
            return rough
        di, dj = _peak(score, int(i), int(j))
        # template top-left at window px (i, j): the finder's centre 4.5 modules further
        ux = (i + di + 4.5 * FINDER_PX) / FINDER_PX * m + rect[0]
        uy = (j + dj + 4.5 * FINDER_PX) / FINDER_PX * m + rect[1]
        found.append(cv2.perspectiveTransform(np.array([[[ux, uy]]]), to_px)[0, 0])
    centres = np.array([[3.5 * m, 3.5 * m], [side - 3.5 * m, 3.5 * m], [3.5 * m, side - 3.5 * m]], np.float32)
    affine = cv2.getAffineTransform(centres, np.array(found, np.float32)).astype(np.float64)
    corners = np.hstack([src, np.ones((4, 1), np.float32)]) @ affine.T
    if np.abs(corners - rough).max() > 2.5 * (np.linalg.norm(rough[1] - rough[0]) / n + 1):
        return rough  # nothing like where the decoder saw it: trust the decoder
    return corners


def _peak(score: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """Sub-pixel offset of a maximum, from a parabola through it and its neighbours."""
    def offset(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.0 if d >= 0 else max(-0.5, min(0.5, 0.5 * (a - c) / d))

    di = offset(score[j, i - 1], score[j, i], score[j, i + 1]) if 0 < i < score.shape[1] - 1 else 0.0
    dj = offset(score[j - 1, i], score[j, i], score[j + 1, i]) if 0 < j < score.shape[0] - 1 else 0.0
    return di, dj


def _gradient(gray: np.ndarray) -> np.ndarray:
    """The gradient magnitude, grey levels a pixel (Sobel, normalised)."""
    g = gray.astype(np.float32)
    return cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8, cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8)


def _steepness(gray: np.ndarray, contrast: float) -> float:
    """The 99th percentile of the gradient magnitude over the contrast (per pixel)."""
    if contrast <= 0 or min(gray.shape) < 3:
        return 0.0
    return float(np.percentile(_gradient(gray)[1:-1, 1:-1], 99)) / contrast


def frame_sharpness(frame: Any) -> float | None:
    """Edge steepness of a whole frame (no label to go by): the frame brought to FRAME_WIDTH pixels
    wide, the 99.8th percentile of its gradient over its 1st-99th percentile contrast, per pixel.
    None for a frame with nothing in it (no contrast to speak of)."""
    rgb = _as_rgb(frame)
    if rgb is None or min(rgb.shape[:2]) < 3:
        return None
    gray = _gray(rgb)
    if gray.shape[1] > FRAME_WIDTH:
        factor = gray.shape[1] / FRAME_WIDTH
        gray = cv2.resize(gray, (FRAME_WIDTH, max(3, round(gray.shape[0] / factor))), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(gray, [1, 99])
    if hi - lo < 10:
        return None
    return float(np.percentile(_gradient(gray), 99.8)) / float(hi - lo)


# ---------------------------------------------------------------- the measurements

@dataclass
class _Scene:
    """What one frame measured so far: the checks read and add to it."""

    rgb: np.ndarray
    layout: Layout
    thresholds: Thresholds
    values: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, Quad] = field(default_factory=dict)
    label: Label | None = None
    to_px: np.ndarray | None = None
    gains: np.ndarray | None = None  # per linear channel: the label's white -> LABEL_WHITE
    in_view: dict[str, float] = field(default_factory=dict)
    label_rgb: np.ndarray | None = None
    colour_rgb: np.ndarray | None = None
    engraving_rgb: np.ndarray | None = None

    def finding(self, verdict: str, check: str = "", reason: str = "") -> Finding:
        return Finding(verdict, reason, check, dict(self.values), dict(self.regions))


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.0f}%" if fraction >= 0.01 else f"{100 * fraction:.1f}%"


def _locate(scene: _Scene, label: Label) -> None:
    """The label's homography, every region's outline, the scale and angle, and the regions cut
    out straightened (a region not fully in view is not cut out)."""
    layout, values = scene.layout, scene.values
    scene.label = label
    to_px = scene.to_px = _homography(label, layout.label_mm)
    tl, tr, br, bl = (np.array(c) for c in label.corners)
    sides = [np.linalg.norm(tr - tl), np.linalg.norm(br - tr), np.linalg.norm(bl - br), np.linalg.norm(tl - bl)]
    values["label"] = label.text
    values["px_per_mm"] = _r(sum(sides) / 4 / layout.label_mm, 3)
    values["angle_deg"] = _r(-math.degrees(math.atan2(tr[1] - tl[1], tr[0] - tl[0])), 1)
    for name, rect in (("label", (0.0, 0.0, layout.label_mm, layout.label_mm)), ("colour", layout.colour),
                       ("engraving", layout.engraving)):
        quad = _quad(to_px, rect)
        scene.regions[name] = [[_r(x, 1), _r(y, 1)] for x, y in quad]
        scene.in_view[name] = _in_view(quad, scene.rgb.shape)
    label_rect = _grow((0, 0, layout.label_mm, layout.label_mm), LABEL_MARGIN_MM)
    scene.label_rgb = _rectify(scene.rgb, to_px, label_rect, LABEL_PX_PER_MM)
    if scene.in_view["colour"] >= IN_VIEW:
        scene.colour_rgb = _rectify(scene.rgb, to_px, layout.colour, COLOUR_PX_PER_MM)
    if scene.in_view["engraving"] >= IN_VIEW:
        scene.engraving_rgb = _rectify(scene.rgb, to_px, _grow(layout.engraving, scene.thresholds.search_mm),
                                       ENGRAVING_PX_PER_MM)


def _clipped(rgb: np.ndarray) -> float:
    return float(np.mean(rgb.reshape(-1, 3).max(axis=1) >= CLIPPED)) if rgb.size else 0.0


def _exposure(scene: _Scene) -> Problem | None:
    """The label's white (and from it the white balance) and the clipped fractions; why not, or None."""
    t, values = scene.thresholds, scene.values
    assert scene.label_rgb is not None
    gray = _gray(scene.label_rgb)
    white = scene.label_rgb[gray >= np.percentile(gray, 75)]
    white_linear = _LINEAR_LUT[white].mean(axis=0)
    white_L = float(_lightness(np.array(white_linear @ _LUMA)))
    values["white_L"] = _r(white_L, 1)
    values["white_rgb"] = [_r(c, 1) for c in linear_to_srgb(white_linear)]
    scene.gains = srgb_to_linear(np.array(hex_to_rgb(LABEL_WHITE))) / np.maximum(white_linear, 1e-4)
    saturated = {"the label's white": _clipped(white)}
    if scene.colour_rgb is not None:
        saturated["the colour region"] = _clipped(scene.colour_rgb)
    if scene.engraving_rgb is not None:
        saturated["the engraving area"] = _clipped(scene.engraving_rgb)
    worst = max(saturated, key=lambda k: saturated[k])
    values["saturated"] = _r(saturated[worst], 4)
    values["saturated_in"] = worst
    if white_L < t.min_white:
        return "retake", "exposure", f"too dark: label white L* {white_L:.0f} < {t.min_white:g}"
    if saturated[worst] > t.max_saturated:
        return "retake", "exposure", (f"overexposed: {_pct(saturated[worst])} of {worst} clipped "
                            f"(at most {_pct(t.max_saturated)})")
    return None


def _sharpness(scene: _Scene) -> Problem | None:
    """The label's edge steepness, contrast per mm; why it is too soft, or None."""
    t, values = scene.thresholds, scene.values
    assert scene.label_rgb is not None
    gray = _gray(scene.label_rgb)
    # black and white from the finders' cores and the quiet zone: areas big enough to stay put under blur
    dark, bright = np.percentile(gray, [3, 97])
    contrast = float(bright - dark)
    sharpness = _steepness(gray, contrast) * LABEL_PX_PER_MM
    values["sharpness"] = _r(sharpness)
    values["label_contrast"] = _r(contrast, 1)
    if sharpness < t.min_sharpness:
        return "retake", "sharpness", f"blurred: label sharpness {sharpness:.2f} < {t.min_sharpness:g}"
    return None


def _balanced_lab(scene: _Scene, rgb: np.ndarray) -> np.ndarray:
    assert scene.gains is not None
    return linear_to_lab(_LINEAR_LUT[rgb] * scene.gains)


def _measure_colour(scene: _Scene) -> np.ndarray | None:
    if scene.colour_rgb is None:
        return None
    lab = np.median(_balanced_lab(scene, scene.colour_rgb).reshape(-1, 3), axis=0)
    scene.values["lab"] = [_r(v, 1) for v in lab]
    return lab


def _colour(scene: _Scene, ref: ColourRef, others: Sequence[ColourRef]) -> Problem | None:
    if scene.colour_rgb is None:
        return "retake", "colour", f"colour: the colour region is not fully in view ({_pct(scene.in_view['colour'])})"
    lab = _measure_colour(scene)
    de = delta_e(lab, ref.lab)
    scene.values["delta_e"] = _r(de, 1)
    scene.values["colour"] = ref.name
    rivals = sorted(((delta_e(lab, o.lab), o) for o in others if o.name != ref.name), key=lambda r: r[0])
    if rivals:
        scene.values["nearest"] = rivals[0][1].name
        scene.values["nearest_delta_e"] = _r(rivals[0][0], 1)
    if de <= ref.tolerance:
        return None
    reason = f"colour: ΔE {de:.1f} from {ref.name} (tolerance {ref.tolerance:g})"
    if rivals:
        d, other = rivals[0]
        reason += f"; looks {other.name}" if d <= other.tolerance else f"; nearest {other.name} (ΔE {d:.1f})"
    return "reject", "colour", reason


def _ink(scene: _Scene) -> np.ndarray:
    """The ink (1) of the rectified engraving area, with its search margin."""
    assert scene.engraving_rgb is not None and scene.gains is not None
    linear = _LINEAR_LUT[scene.engraving_rgb] * scene.gains
    L = _lightness(np.clip(linear @ _LUMA.astype(np.float32), 0, None))
    L = cv2.GaussianBlur(L, (0, 0), 0.7)
    body = float(np.median(L))
    noise = 1.4826 * float(np.median(np.abs(L - body)))
    threshold = max(scene.thresholds.ink_contrast, 4 * noise)
    ink = (np.abs(L - body) > threshold).astype(np.uint8)
    ink = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    scene.values["body_L"] = _r(body, 1)
    scene.values["ink_threshold_L"] = _r(threshold, 1)
    return ink


def _disc(radius_px: float) -> np.ndarray:
    r = max(0, int(round(radius_px)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


@dataclass(frozen=True)
class InkMatch:
    """How the ink of an engraving area matches the expected ink (see the module docstring)."""

    score: float  # 0..1: the lower of `f1` and `worst_column`; for an area to be blank, 1 - ink / blank
    recall: float  # expected pixels with ink near them
    precision: float  # ink pixels with expected ink near them
    f1: float
    worst_column: float  # the lowest F1 of a column
    worst_at: int  # that column's left edge, pixels from the area's left edge
    shift: tuple[int, int]  # where the expected ink fits best, pixels from the layout's place
    ink_px: int  # ink pixels in the area (at the shift)


def _f1(recall: Any, precision: Any) -> Any:
    total = recall + precision
    return np.where(total > 0, 2 * recall * precision / np.where(total > 0, total, 1), 0.0)


def match_ink(ink: np.ndarray, expected: np.ndarray, *, margin_px: int, tolerance_px: float, column_px: int,
              min_column_px: int, blank_px: float) -> InkMatch:
    """Match `ink` (the area plus `margin_px` on every side, nonzero = ink) with the `expected`
    ink of the area (bool), both at the same pixels a mm."""
    rows, cols = expected.shape
    ink = (ink > 0).astype(np.uint8)
    if not expected.any():
        area = int(ink[margin_px:margin_px + rows, margin_px:margin_px + cols].sum())
        score = max(0.0, 1.0 - area / blank_px)
        return InkMatch(score, 1.0, 0.0 if area else 1.0, score, score, 0, (0, 0), area)
    disc = _disc(tolerance_px)
    # where the expected ink overlaps the ink best (the layout's place on a tie)
    soft = cv2.GaussianBlur(expected.astype(np.float32), (0, 0), max(1.0, tolerance_px / 2))
    overlap = cv2.matchTemplate(ink.astype(np.float32), soft, cv2.TM_CCORR)
    ys, xs = np.mgrid[0:overlap.shape[0], 0:overlap.shape[1]]
    overlap -= 1e-3 * ((xs - margin_px) ** 2 + (ys - margin_px) ** 2)
    dy, dx = (int(v) for v in np.unravel_index(int(np.argmax(overlap)), overlap.shape))
    window = ink[dy:dy + rows, dx:dx + cols]
    near_ink = cv2.dilate(ink, disc)[dy:dy + rows, dx:dx + cols]
    near_expected = cv2.dilate(expected.astype(np.uint8), disc)
    # per pixel column: expected, expected with ink near, ink, ink with expected near
    counts = np.stack([expected.sum(axis=0), (expected & (near_ink > 0)).sum(axis=0),
                       window.sum(axis=0), (window & near_expected).sum(axis=0)]).astype(np.float64)
    e, e_hit, i, i_hit = counts.sum(axis=1)
    recall = e_hit / e
    precision = i_hit / i if i else 0.0
    f1 = float(_f1(recall, precision))
    # columns `column_px` wide every half column: one wrong or missing letter cannot hide in a long name
    cumulative = np.concatenate([np.zeros((4, 1)), np.cumsum(counts, axis=1)], axis=1)
    starts = np.arange(0, max(1, cols - column_px // 2), max(1, column_px // 2))
    ends = np.minimum(starts + column_px, cols)
    ce, ce_hit, ci, ci_hit = cumulative[:, ends] - cumulative[:, starts]
    col_recall = np.where(ce >= min_column_px, ce_hit / np.maximum(ce, 1), 1.0)
    col_precision = np.where(ci >= min_column_px, ci_hit / np.maximum(ci, 1), 1.0)
    columns = _f1(col_recall, col_precision)
    worst = int(np.argmin(columns))
    return InkMatch(min(f1, float(columns[worst])), float(recall), float(precision), f1, float(columns[worst]),
                    int(starts[worst]), (dx - margin_px, dy - margin_px), int(i))


def _engraving(scene: _Scene, strokes: tuple[Stroke, ...]) -> Problem | None:
    t, values = scene.thresholds, scene.values
    if scene.engraving_rgb is None:
        return "retake", "engraving", f"engraving: the area is not fully in view ({_pct(scene.in_view['engraving'])})"
    ppm = ENGRAVING_PX_PER_MM
    ink = _ink(scene)
    _, _, w, h = scene.layout.engraving
    expected = stroke_mask(strokes, (w, h), ppm, t.stroke_mm)
    margin = (ink.shape[1] - expected.shape[1]) // 2
    m = match_ink(ink, expected, margin_px=margin, tolerance_px=t.tolerance_mm * ppm,
                  column_px=max(2, round(t.column_mm * ppm)), min_column_px=round(t.min_column_mm2 * ppm * ppm),
                  blank_px=t.blank_mm2 * ppm * ppm)
    ink_mm2 = m.ink_px / ppm ** 2
    values.update(engraving_score=_r(m.score, 3), engraving_recall=_r(m.recall, 3),
                  engraving_precision=_r(m.precision, 3), engraving_f1=_r(m.f1, 3),
                  engraving_worst_column=_r(m.worst_column, 3), engraving_worst_at_mm=_r(m.worst_at / ppm, 1),
                  ink_mm2=_r(ink_mm2, 1), engraving_shift_mm=[_r(m.shift[0] / ppm), _r(m.shift[1] / ppm)])
    if m.score >= t.min_engraving:
        return None
    head = f"engraving: score {m.score:.2f} < {t.min_engraving:.2f}"
    if not strokes:
        return "reject", "engraving", f"{head} (engraved where nothing was ordered: {ink_mm2:.1f} mm² of ink)"
    if m.recall < 0.1:
        return "reject", "engraving", f"{head} (missing: {ink_mm2:.1f} mm² of ink, recall {m.recall:.2f})"
    where = f", worst {m.worst_column:.2f} at {m.worst_at / ppm:.0f} mm" if m.worst_column < m.f1 else ""
    return "reject", "engraving", (f"{head} (wrong or incomplete: recall {m.recall:.2f}, precision {m.precision:.2f}"
                         f"{where})")


def _start(frame: Any, layout: Layout, thresholds: Thresholds) -> tuple[_Scene | None, Finding | None, list[Label]]:
    rgb = _as_rgb(frame)
    if rgb is None:
        shape = getattr(frame, "shape", None)
        return None, Finding("retake", f"not a camera frame (shape {shape})", "label", {}, {}), []
    scene = _Scene(rgb, layout, thresholds)
    labels = _decode(_gray(rgb)) if min(rgb.shape[:2]) >= 21 else []
    scene.values["labels_seen"] = [label.text for label in labels]
    if not labels:
        sharpness = frame_sharpness(rgb)
        scene.values["frame_sharpness"] = None if sharpness is None else _r(sharpness, 3)
        blurred = sharpness is not None and sharpness < thresholds.min_frame_sharpness
        hint = f" (blurred? sharpness {sharpness:.2f})" if blurred else ""
        return scene, scene.finding("retake", "label", f"no QR label in the frame{hint}"), labels
    return scene, None, labels


def inspect(frame: Any, expected: Expected, layout: Layout, thresholds: Thresholds = Thresholds()) -> Finding:
    """Judge one frame of a finished part: pass, reject (the part is wrong) or retake (the frame
    cannot tell). Never raises on a bad frame: it is a retake with the reason."""
    scene, early, labels = _start(frame, layout, thresholds)
    if early is not None or scene is None:
        return early  # type: ignore[return-value]
    ours = [label for label in labels if label.text in expected.labels]
    _locate(scene, (ours or labels)[0])
    # every check runs, so everything that can be measured is; the first problem decides
    problems = [_exposure(scene), _sharpness(scene)]
    if not ours:
        seen = ", ".join(label.text for label in labels)
        whose = "is another part's" if len(labels) == 1 else "are other parts'"
        problems.append(("retake", "label", f"label {seen} {whose} (expected {' or '.join(expected.labels)})"))
    if expected.colour is not None:
        problems.append(_colour(scene, expected.colour, expected.others))
    else:
        _measure_colour(scene)
    if expected.strokes is not None:
        problems.append(_engraving(scene, tuple(expected.strokes)))
    return scene.finding(*next((p for p in problems if p), ("pass", "", "")))


def measure(frame: Any, layout: Layout, thresholds: Thresholds = Thresholds()) -> Finding:
    """Measure a part with no expectations (the calibration command): find a label, check the
    exposure and sharpness, measure the body's Lab. "pass" when measured, else "retake" and why."""
    scene, early, labels = _start(frame, layout, thresholds)
    if early is not None or scene is None:
        return early  # type: ignore[return-value]
    _locate(scene, labels[0])
    problems = [_exposure(scene), _sharpness(scene)]
    if _measure_colour(scene) is None:
        problems.append(("retake", "colour",
                         f"colour: the colour region is not fully in view ({_pct(scene.in_view['colour'])})"))
    return scene.finding(*next((p for p in problems if p), ("pass", "", "")))


# ---------------------------------------------------------------- for people

_VERDICT_COLOUR = {"pass": (40, 170, 60), "reject": (220, 40, 40), "retake": (240, 160, 0)}
_REGION_COLOUR = {"label": (0, 160, 255), "colour": (255, 0, 255), "engraving": (255, 220, 0)}


def _ascii(text: str) -> str:
    return text.replace("ΔE", "dE").replace("²", "2").encode("ascii", "replace").decode("ascii")


def annotate(frame: Any, finding: Finding) -> np.ndarray:
    """A copy of the frame for people: the regions outlined, the verdict, the reason and the key values."""
    rgb = _as_rgb(frame)
    out = np.zeros((240, 320, 3), np.uint8) if rgb is None or min(rgb.shape[:2]) < 2 else rgb.copy()
    scale = max(0.4, out.shape[1] / 1100)
    thick = max(1, round(scale * 1.5))
    for name, quad in finding.regions.items():
        pts = np.round(np.array(quad, np.float64)).astype(np.int32)
        cv2.polylines(out, [pts], True, _REGION_COLOUR.get(name, (255, 255, 255)), thick, cv2.LINE_AA)
    v = finding.values
    keys = [("label", "{}"), ("white_L", "white L* {:.0f}"), ("sharpness", "sharp {:.2f}"),
            ("delta_e", "dE {:.1f}"), ("engraving_score", "engr {:.2f}")]
    summary = "  ".join(fmt.format(v[k]) for k, fmt in keys if k in v)
    lines = [finding.verdict.upper() + (f" [{finding.check}]" if finding.check else ""), finding.reason, summary]
    y = 0
    for i, text in enumerate(line for line in lines if line):
        text = _ascii(text)
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y += h + base + 4
        cv2.rectangle(out, (0, y - h - base - 4), (w + 8, y + 2), (0, 0, 0), -1)
        colour = _VERDICT_COLOUR.get(finding.verdict, (255, 255, 255)) if i == 0 else (255, 255, 255)
        cv2.putText(out, text, (4, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return out

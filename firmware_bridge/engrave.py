"""The visitor's text -> GRBL laser-mode G-code, and a preview picture of the toolpath.

Pure: `engrave` and `drawable` take text and numbers and return values; only `preview_png`
writes a file (the PNG it is asked for).

**Font.** A Hershey simplex face (single stroke: the laser follows each line once), from the
`Hershey-Fonts` package; `futural` by default, `rowmans` as well. Font units have y down, the
cap line at -12, the baseline at 9 and the descender at 16: "letter height" is the cap height
(21 units), so 5 mm letters make an "H" 5 mm tall.

**Characters** (`ENGRAVABLE`): the font's printable ASCII, and letters the font lacks, drawn
here: a base letter plus accent strokes (acute, grave, circumflex, diaeresis, tilde above,
cedilla below; "i" loses its dot under an accent), the ligatures œ Œ æ Æ (the two letters
set touching), ß, and the typographic apostrophes ’ ‘. Text is NFC-normalised first, so
"e" + combining acute is "é". Anything else is a ValueError naming the character.

**Fit.** The text is centred (its ink, accents and descenders included) in the area less its
margins, at the largest letter height up to `max_height_mm` (floored to 0.01 mm). If one
line does not fit at `min_height_mm`, it is broken at the space that gives the largest
letters on two lines (when `max_lines` is 2); if that still does not fit, ValueError
"text too long for the engraving area (W x H mm)".

**G-code** (GRBL 1.1 with `$32=1`, laser mode, which the station checks: no `$` line here):
`G21 G90`, `M4 S0` (dynamic power: the beam scales with the actual speed, so corners do not
burn deeper), then for every stroke `G0 X Y S0` (the rapid to its start, carrying `S0`: laser
mode already turns the beam off on G0, the explicit S0 keeps it off even on a controller
left in spindle mode) and `G1` cuts, the first with `S<power> F<feed>`. Every stroke thus
states its own power and feed, so a job resumed at any stroke start needs no earlier line.
The job ends with `M5` and a rapid back to the area's origin (`G0 X0 Y0` for an area at the
machine origin). Coordinates have at most 3 decimals and stay inside the area; lines are
ASCII and short. The visitor's text never appears in the G-code: GRBL 1.1 takes bytes
0x80-0xFF as real-time override commands wherever they appear, comments included, so an "é"
in a comment would change the feed or the spindle mid-job.
"""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

FONTS = ("futural", "rowmans")
CAP_UNITS = 21.0  # cap line (-12) to baseline (9) in font units
_BASELINE = 9
_LINE_PITCH = 28.0  # font units from baseline to baseline, at least
_LINE_GAP = 4.0  # font units between one line's lowest ink and the next line's highest

Point = tuple[float, float]
Stroke = tuple[Point, ...]


@dataclass(frozen=True)
class EngravingArea:
    """Where the text goes on the part, in mm, machine coordinates (`origin` = lower left)."""

    width_mm: float
    height_mm: float
    margin_mm: float = 2.0
    min_height_mm: float = 3.0
    max_height_mm: float = 10.0
    max_lines: int = 2
    origin: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not (self.width_mm > 0 and self.height_mm > 0):
            raise ValueError(f"engraving area must have a positive size, not {self.width_mm} x {self.height_mm} mm")
        if self.margin_mm < 0 or 2 * self.margin_mm >= min(self.width_mm, self.height_mm):
            raise ValueError(f"margin {self.margin_mm} mm leaves nothing of a {_size(self)} mm area")
        if not 0 < self.min_height_mm <= self.max_height_mm:
            raise ValueError(f"letter heights must be 0 < min <= max, not {self.min_height_mm}..{self.max_height_mm} mm")
        if self.max_lines not in (1, 2):
            raise ValueError(f"max_lines must be 1 or 2, not {self.max_lines}")

    @classmethod
    def of(cls, spec: Any) -> EngravingArea:
        """The area a line file's `[products.<id>.engraving]` describes (edge.config.EngravingSpec)."""
        return cls(spec.width_mm, spec.height_mm, spec.margin_mm, spec.min_height_mm, spec.max_height_mm,
                   spec.max_lines)


@dataclass(frozen=True)
class LaserMaterial:
    """How hard and how fast to burn: `power` is GRBL's S (0..$30, 1000 by default), `feed` mm/min."""

    power: int
    feed: int
    passes: int = 1

    def __post_init__(self) -> None:
        if self.power < 1 or self.feed < 1 or self.passes < 1:
            raise ValueError(f"laser power, feed and passes must be positive, not "
                             f"S{self.power} F{self.feed} x{self.passes}")

    @classmethod
    def of(cls, spec: Any) -> LaserMaterial:
        """The material a line file's `[materials.<id>]` describes (edge.config.MaterialSpec)."""
        return cls(spec.power, spec.feed, spec.passes)


@dataclass(frozen=True)
class Engraving:
    """One laid-out text: its lines, letter height, strokes (mm, inside the area) and G-code."""

    text: str
    lines: tuple[str, ...]
    letter_height_mm: float
    strokes: tuple[Stroke, ...]
    gcode: tuple[str, ...]
    bbox: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax of the strokes, mm


@dataclass(frozen=True)
class _Glyph:
    strokes: tuple[Stroke, ...]  # font units: x from the pen position, y down from the baseline
    advance: float


# ---------------------------------------------------------------- the character set

_GRAVE, _ACUTE, _CIRCUMFLEX, _DIAERESIS, _TILDE, _CEDILLA = "\u0300", "\u0301", "\u0302", "\u0308", "\u0303", "\u0327"
_BASES_MARKS = {
    "aeiouAEIOU": _GRAVE + _ACUTE + _CIRCUMFLEX + _DIAERESIS,
    "yY": _ACUTE + _DIAERESIS,
    "nN": _TILDE,
    "cC": _CEDILLA,
}
_COMPOSED = {unicodedata.normalize("NFC", base + mark): (base, mark)
             for bases, marks in _BASES_MARKS.items() for base in bases for mark in marks}
_LIGATURES = {"œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE"}
_APOSTROPHES = "’‘"
# ß in font units (the font's own grid): a stem to the cap line, a small bowl, a big bowl.
_ESZETT = (((-6, 9), (-6, -6), (-5, -10), (-3, -12), (0, -12), (2, -11), (3, -9), (3, -7), (2, -5), (-1, -4)),
           ((-1, -4), (3, -3), (5, -1), (6, 2), (6, 4), (5, 7), (3, 8), (1, 9), (-2, 9)))
_ESZETT_LEFT, _ESZETT_ADVANCE = -10, 19

#: Every character `engrave` can draw (a line file's `charset` should be a subset).
ENGRAVABLE = ("".join(chr(c) for c in range(32, 127)) + "".join(sorted(_COMPOSED))
              + "".join(_LIGATURES) + "ß" + _APOSTROPHES)

# Accent strokes, centred on x = 0, y up from their foot at 0 (negative: font y is down).
_ACCENTS: dict[str, tuple[Stroke, ...]] = {
    _ACUTE: (((-1.5, 0.0), (1.5, -4.0)),),
    _GRAVE: (((-1.5, -4.0), (1.5, 0.0)),),
    _CIRCUMFLEX: (((-3.0, 0.0), (0.0, -3.5), (3.0, 0.0)),),
    _DIAERESIS: tuple(((x - 1, -1.0), (x, 0.0), (x + 1, -1.0), (x, -2.0), (x - 1, -1.0)) for x in (-3.0, 3.0)),
    _TILDE: (((-3.5, -1.0), (-2.5, -3.0), (-1.0, -3.5), (1.0, -1.5), (2.5, -1.0), (3.5, -3.0)),),
}
_CEDILLA_STROKE: Stroke = ((0.0, 0.0), (0.0, 2.0), (1.5, 2.5), (2.5, 3.5), (2.0, 5.0), (0.0, 5.5), (-1.5, 5.0))


def drawable(text: str) -> str | None:
    """The first character of `text` (NFC-normalised) that cannot be engraved, or None."""
    return next((c for c in unicodedata.normalize("NFC", text) if c not in ENGRAVABLE), None)


@lru_cache(maxsize=len(FONTS))
def _font(name: str) -> dict[str, _Glyph]:
    """Every ENGRAVABLE character of the font `name`, as glyphs."""
    if name not in FONTS:
        raise ValueError(f"unknown laser font {name!r} (fonts: {', '.join(FONTS)})")
    from HersheyFonts import HersheyFonts

    hershey = HersheyFonts()
    hershey.load_default_font(name)
    glyphs = {}
    for char, g in hershey.all_glyphs.items():
        if " " <= char <= "~":
            glyphs[char] = _Glyph(_shift(tuple(tuple(map(tuple, s)) for s in g.strokes), -g.left_offset, -_BASELINE),
                                  float(g.char_width))
    glyphs["ß"] = _Glyph(_shift(_ESZETT, -_ESZETT_LEFT, -_BASELINE), _ESZETT_ADVANCE)
    for char, (base, mark) in _COMPOSED.items():
        glyphs[char] = _accented(glyphs[base], base, mark)
    for char, (first, second) in _LIGATURES.items():
        glyphs[char] = _joined(glyphs[first], glyphs[second])
    quote = glyphs["'"]
    glyphs["’"] = quote
    glyphs["‘"] = _Glyph(_turned(quote.strokes), quote.advance)
    return glyphs


def _shift(strokes: tuple[Stroke, ...], dx: float, dy: float, sy: float = 1.0) -> tuple[Stroke, ...]:
    return tuple(tuple((x + dx, y * sy + dy) for x, y in s) for s in strokes)


def _points(strokes: tuple[Stroke, ...]) -> list[Point]:
    return [p for s in strokes for p in s]


def _accented(glyph: _Glyph, base: str, mark: str) -> _Glyph:
    strokes = glyph.strokes
    if base == "i":  # dotless i under the accent
        strokes = tuple(s for s in strokes if max(y for _, y in s) > -CAP_UNITS / 2)
    points = _points(strokes)
    if mark == _CEDILLA:
        bottom = max(y for _, y in points)
        xs = [x for x, y in points if y == bottom]
        return _Glyph(strokes + _shift((_CEDILLA_STROKE,), sum(xs) / len(xs), bottom), glyph.advance)
    above = [x for x, y in points if y < 0] or [x for x, _ in points]
    centre = (min(above) + max(above)) / 2
    top = min(y for _, y in points)
    capital = base.isupper()
    foot = top - (2.0 if capital else 3.0)
    return _Glyph(strokes + _shift(_ACCENTS[mark], centre, foot, 0.75 if capital else 1.0), glyph.advance)


def _joined(first: _Glyph, second: _Glyph) -> _Glyph:
    dx = max(x for x, _ in _points(first.strokes)) - min(x for x, _ in _points(second.strokes))
    return _Glyph(first.strokes + _shift(second.strokes, dx, 0.0), dx + second.advance)


def _turned(strokes: tuple[Stroke, ...]) -> tuple[Stroke, ...]:
    """Turned half a turn about the centre of its ink: ’ becomes ‘."""
    box = _box(strokes)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return tuple(tuple((2 * cx - x, 2 * cy - y) for x, y in s) for s in strokes)


def _box(strokes: tuple[Stroke, ...]) -> tuple[float, float, float, float]:
    points = _points(strokes)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return min(xs), min(ys), max(xs), max(ys)


# ---------------------------------------------------------------- layout

@dataclass(frozen=True)
class _Block:
    lines: tuple[str, ...]
    strokes: tuple[Stroke, ...]  # font units, y down, each line centred on x = 0
    box: tuple[float, float, float, float]


def _line(text: str, glyphs: dict[str, _Glyph]) -> tuple[Stroke, ...]:
    pen, out = 0.0, []
    for char in text:
        glyph = glyphs[char]
        out += _shift(glyph.strokes, pen, 0.0)
        pen += glyph.advance
    return tuple(out)


def _block(lines: tuple[str, ...], glyphs: dict[str, _Glyph]) -> _Block:
    strokes: list[Stroke] = []
    baseline = 0.0
    previous_bottom = None
    for text in lines:
        line = _line(text, glyphs)
        x0, y0, x1, y1 = _box(line)
        if previous_bottom is not None:
            baseline += max(_LINE_PITCH, previous_bottom - y0 + _LINE_GAP)
        strokes += _shift(line, -(x0 + x1) / 2, baseline)
        previous_bottom = y1
    return _Block(lines, tuple(strokes), _box(tuple(strokes)))


def _fit(block: _Block, area: EngravingArea) -> float:
    """The largest letter height (mm, up to the area's maximum) at which `block` fits."""
    inner_w, inner_h = area.width_mm - 2 * area.margin_mm, area.height_mm - 2 * area.margin_mm
    x0, y0, x1, y1 = block.box
    height = area.max_height_mm
    if x1 > x0:
        height = min(height, inner_w * CAP_UNITS / (x1 - x0))
    if y1 > y0:
        height = min(height, inner_h * CAP_UNITS / (y1 - y0))
    return height


def _layout(text: str, area: EngravingArea, glyphs: dict[str, _Glyph]) -> tuple[_Block, float]:
    single = _block((text,), glyphs)
    height = _fit(single, area)
    if height >= area.min_height_mm or area.max_lines < 2:
        return single, height
    best, best_height = single, height
    seen = set()
    for i, char in enumerate(text):
        lines = (text[:i].strip(), text[i + 1:].strip())
        if char != " " or not all(lines) or lines in seen:
            continue
        seen.add(lines)
        block = _block(lines, glyphs)
        if (h := _fit(block, area)) > best_height:
            best, best_height = block, h
    return best, best_height


# ---------------------------------------------------------------- G-code

def _num(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _bounds(area: EngravingArea) -> tuple[float, float, float, float]:
    """The area rounded inwards to the 3 decimals the G-code carries."""
    ox, oy = area.origin
    return (math.ceil(ox * 1000 - 1e-6) / 1000, math.ceil(oy * 1000 - 1e-6) / 1000,
            math.floor((ox + area.width_mm) * 1000 + 1e-6) / 1000,
            math.floor((oy + area.height_mm) * 1000 + 1e-6) / 1000)


def _place(block: _Block, height: float, area: EngravingArea) -> tuple[Stroke, ...]:
    """Font units -> mm, y up, the block's ink centred in the area, rounded to 0.001 mm."""
    scale = height / CAP_UNITS
    x0, y0, x1, y1 = block.box
    bx, by = (x0 + x1) / 2, (y0 + y1) / 2
    ox, oy = area.origin
    cx, cy = ox + area.width_mm / 2, oy + area.height_mm / 2
    lo_x, lo_y, hi_x, hi_y = _bounds(area)
    out = []
    for stroke in block.strokes:
        points: list[Point] = []
        for x, y in stroke:
            p = (min(max(round(cx + (x - bx) * scale, 3), lo_x), hi_x),
                 min(max(round(cy - (y - by) * scale, 3), lo_y), hi_y))
            if not points or p != points[-1]:
                points.append(p)
        if len(points) > 1:
            out.append(tuple(points))
    return tuple(out)


def _gcode(strokes: tuple[Stroke, ...], material: LaserMaterial, area: EngravingArea) -> tuple[str, ...]:
    power, feed = f"S{material.power}", f"F{material.feed}"
    out = ["G21 G90", "M4 S0"]
    for _ in range(material.passes):
        for stroke in strokes:
            (x, y), cuts = stroke[0], stroke[1:]
            out.append(f"G0 X{_num(x)} Y{_num(y)} S0")
            out.append(f"G1 X{_num(cuts[0][0])} Y{_num(cuts[0][1])} {power} {feed}")
            out += (f"G1 X{_num(x)} Y{_num(y)}" for x, y in cuts[1:])
    lo_x, lo_y, _, _ = _bounds(area)
    out += ["M5", f"G0 X{_num(lo_x)} Y{_num(lo_y)}"]
    return tuple(out)


def engrave(text: str, area: EngravingArea, material: LaserMaterial, font: str = "futural") -> Engraving:
    """Lay `text` out in `area` and make its G-code; ValueError (with a reason to show) when it
    is empty, has a character the laser cannot draw, or does not fit."""
    glyphs = _font(font)
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise ValueError("nothing to engrave: the text is empty")
    bad = drawable(text)
    if bad is not None:
        raise ValueError(f"the laser cannot draw {bad!r} (U+{ord(bad):04X})")
    block, height = _layout(text, area, glyphs)
    if height < area.min_height_mm:
        raise ValueError(f"text too long for the engraving area ({_size(area)} mm): "
                         f"it does not fit in {area.max_lines} line{'s' if area.max_lines > 1 else ''} "
                         f"at {_num(area.min_height_mm)} mm letters")
    height = max(area.min_height_mm, math.floor(height * 100 + 1e-6) / 100)
    strokes = _place(block, height, area)
    points = _points(strokes)
    bbox = (min(x for x, _ in points), min(y for _, y in points),
            max(x for x, _ in points), max(y for _, y in points)) if points else (*area.origin, *area.origin)
    return Engraving(text, block.lines, height, strokes, _gcode(strokes, material, area), bbox)


def _size(area: EngravingArea) -> str:
    return f"{_num(area.width_mm)} x {_num(area.height_mm)}"


# ---------------------------------------------------------------- preview

def preview_png(engraving: Engraving, area: EngravingArea, path: os.PathLike[str] | str,
                scale: float = 8.0) -> Path:
    """Write a picture of the toolpath: the area outline, its margin, the cuts in dark and the
    rapids faint; `scale` pixels a mm. Returns the path written."""
    from PIL import Image, ImageDraw

    ox, oy = area.origin
    size = (max(1, round(area.width_mm * scale)), max(1, round(area.height_mm * scale)))

    def px(p: Point) -> tuple[float, float]:
        return (p[0] - ox) * scale, (oy + area.height_mm - p[1]) * scale

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    m = area.margin_mm * scale
    draw.rectangle((m, m, size[0] - 1 - m, size[1] - 1 - m), outline=(225, 225, 225))
    draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=(150, 150, 150))
    home = px(area.origin)
    here = home
    for stroke in engraving.strokes:
        draw.line((here, px(stroke[0])), fill=(175, 200, 235), width=1)
        here = px(stroke[-1])
    draw.line((here, home), fill=(175, 200, 235), width=1)
    width = max(1, round(scale * 0.2))
    for stroke in engraving.strokes:
        draw.line([px(p) for p in stroke], fill=(25, 25, 25), width=width, joint="curve")
    out = Path(path)
    image.save(out, format="PNG")
    return out

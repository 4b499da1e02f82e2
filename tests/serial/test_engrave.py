"""The laser's text: a visitor's name, French accents included, becomes safe G-code inside the area."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from trailer import EXAMPLES

from edge.config import load_line
from edge.orders import DEFAULT_CHARSET
from firmware_bridge.engrave import (
    ENGRAVABLE,
    FONTS,
    Engraving,
    EngravingArea,
    LaserMaterial,
    drawable,
    engrave,
    preview_png,
)

STAND = EngravingArea(60, 20)  # the example line's stand: 60 x 20 mm, 2 mm margins, 3..10 mm letters
KEYRING = EngravingArea(30, 10, margin_mm=1.5, min_height_mm=2.5, max_height_mm=6, max_lines=1)
OFFSET = EngravingArea(40, 15, origin=(100.0, 50.0))  # an area away from the machine origin
PLA = LaserMaterial(power=300, feed=1500)
NAMES = ["Hélène", "Françoise", "Zoë", "Cœur", "L'Haÿ-les-Roses", "L’Œuvre", "Ève", "Maëlys",
         "Jérôme", "Noël", "Anaïs", "Benoît", "Çà et là", "ÉLODIE", "Lætitia", "Straße"]
WORD = re.compile(r"([A-Z])(-?\d+(?:\.\d+)?)")


def moves(gcode: tuple[str, ...]) -> list[tuple[str, float, float, bool]]:
    """Every move as (G0/G1, x, y, beam on): a small GRBL laser-mode reading of the job.

    Within a line S and M words take effect before the motion, as in GRBL (NIST order)."""
    motion, spindle, power, x, y = "", "M5", 0.0, 0.0, 0.0
    out = []
    for line in gcode:
        words = WORD.findall(line)
        for letter, value in words:
            if letter == "S":
                power = float(value)
            elif letter == "M":
                spindle = f"M{int(float(value))}"
        codes = [f"G{int(float(v))}" for letter, v in words if letter == "G"]
        motion = next((c for c in codes if c in ("G0", "G1")), motion)
        axes = {letter: float(v) for letter, v in words if letter in "XY"}
        if axes:
            x, y = axes.get("X", x), axes.get("Y", y)
            out.append((motion, x, y, spindle in ("M3", "M4") and power > 0))
    return out


def inside(area: EngravingArea, x: float, y: float) -> bool:
    ox, oy = area.origin
    return ox <= x <= ox + area.width_mm and oy <= y <= oy + area.height_mm


@pytest.mark.parametrize("area", [STAND, KEYRING, OFFSET], ids=["stand", "keyring", "offset"])
@pytest.mark.parametrize("text", ["Hélène", "Zoë", "L’Haÿ", "Ç", "gjpqy", "WWWW", "I", "-"])
def test_every_move_stays_inside_the_area(area, text):
    engraving = engrave(text, area, PLA)
    for motion, x, y, _ in moves(engraving.gcode):
        assert inside(area, x, y), (motion, x, y)
    for stroke in engraving.strokes:
        for x, y in stroke:
            assert inside(area, x, y)


@pytest.mark.parametrize("text", NAMES)
def test_the_beam_is_off_on_every_rapid_and_on_for_every_cut(text):
    engraving = engrave(text, STAND, PLA)
    burned = [(motion, on) for motion, *_, on in moves(engraving.gcode)]
    assert all(not on for motion, on in burned if motion == "G0")
    assert all(on for motion, on in burned if motion == "G1")
    assert sum(motion == "G1" for motion, _ in burned) == sum(len(s) - 1 for s in engraving.strokes)


def test_each_stroke_starts_with_a_rapid_carrying_s0_then_a_cut_with_power_and_feed():
    gcode = engrave("Hélène", STAND, PLA).gcode
    for i, line in enumerate(gcode):
        if line.startswith("G0") and i < len(gcode) - 1:
            assert line.endswith(" S0")
            assert gcode[i + 1].startswith("G1") and gcode[i + 1].endswith(" S300 F1500")


def test_job_sets_millimetres_absolute_dynamic_power_and_ends_off_at_the_origin():
    gcode = engrave("Zoë", STAND, PLA).gcode
    assert gcode[:2] == ("G21 G90", "M4 S0")
    assert gcode[-2:] == ("M5", "G0 X0 Y0")
    assert engrave("Zoë", OFFSET, PLA).gcode[-1] == "G0 X100 Y50"


def test_gcode_is_short_ascii_lines_with_three_decimals_at_most_and_no_settings():
    for text in NAMES:
        for line in engrave(text, STAND, PLA).gcode:
            assert line.isascii() and len(line.encode()) < 70
            assert not line.startswith("$")
            for number in re.findall(r"[XY](-?[\d.]+)", line):
                assert len(number.partition(".")[2]) <= 3


def test_the_visitors_text_never_reaches_the_controller():
    # GRBL reads bytes 0x80-0xFF as real-time overrides, even inside a comment
    gcode = "\n".join(engrave("Hélène", STAND, PLA).gcode)
    assert "Hélène" not in gcode and "(" not in gcode and ";" not in gcode


def test_same_text_gives_the_same_gcode():
    first = engrave("Françoise Dupont", STAND, PLA)
    assert engrave("Françoise Dupont", STAND, PLA) == first
    assert engrave("Françoise Dupont", STAND, PLA, "rowmans").gcode != ()


def test_two_passes_burn_every_stroke_twice():
    once = engrave("Noël", STAND, PLA)
    twice = engrave("Noël", STAND, LaserMaterial(300, 1500, passes=2))
    cuts = [line for line in once.gcode if line.startswith(("G0", "G1"))][:-1]
    assert [line for line in twice.gcode if line.startswith(("G0", "G1"))][:-1] == cuts * 2


def test_a_short_name_gets_the_largest_letters_allowed():
    engraving = engrave("Léa", STAND, PLA)
    assert engraving.letter_height_mm == 10.0
    assert engraving.lines == ("Léa",)


def test_a_longer_name_shrinks_to_fill_the_width_between_the_margins():
    engraving = engrave("Jean-Baptiste", STAND, PLA)
    assert 3.0 <= engraving.letter_height_mm < 10.0
    xmin, _, xmax, _ = engraving.bbox
    assert xmin >= 2.0 and xmax <= 58.0
    assert xmax - xmin > 55.5  # the width limits it: the ink spans the whole inner width


def test_the_text_is_centred_in_the_area():
    xmin, ymin, xmax, ymax = engrave("Zoë", OFFSET, PLA).bbox
    assert (xmin + xmax) / 2 == pytest.approx(120.0, abs=0.002)
    assert (ymin + ymax) / 2 == pytest.approx(57.5, abs=0.002)


def test_a_name_too_long_for_one_line_breaks_at_a_space():
    engraving = engrave("Marie-Hélène de La Tour", STAND, PLA)
    assert len(engraving.lines) == 2
    assert " ".join(engraving.lines) == "Marie-Hélène de La Tour"
    assert engraving.letter_height_mm >= 3.0
    _, ymin, _, ymax = engraving.bbox
    assert ymin >= 2.0 and ymax <= 18.0


def test_a_name_that_fits_on_one_line_stays_on_one():
    assert engrave("Françoise Zoë", STAND, PLA).lines == ("Françoise Zoë",)


def test_a_one_line_keyring_refuses_what_would_need_two_lines():
    with pytest.raises(ValueError, match=r"text too long for the engraving area \(30 x 10 mm\)"):
        engrave("Marie-Hélène Dupont", KEYRING, PLA)


def test_text_without_a_space_that_does_not_fit_is_too_long():
    with pytest.raises(ValueError, match=r"text too long for the engraving area \(60 x 20 mm\)"):
        engrave("W" * 20, STAND, PLA)


@pytest.mark.parametrize("text", ["", "   ", "\t \u00a0 "])
def test_empty_text_is_refused(text):
    with pytest.raises(ValueError, match="nothing to engrave"):
        engrave(text, STAND, PLA)


@pytest.mark.parametrize("char", ["€", "\n", "😀", "ł", "ø", "\u00a0"])
def test_a_character_the_laser_cannot_draw_is_named(char):
    text = f"Zoë {char}x"
    assert drawable(text) == char
    with pytest.raises(ValueError, match=re.escape(repr(char))):
        engrave(text, STAND, PLA)


def test_an_accent_typed_as_two_code_points_engraves_as_one_letter():
    decomposed = unicodedata.normalize("NFD", "Hélène Zoë")
    assert decomposed != "Hélène Zoë" and drawable(decomposed) is None
    assert engrave(decomposed, STAND, PLA) == engrave("Hélène Zoë", STAND, PLA)


ACCENTS = {"é": "e", "è": "e", "ê": "e", "ë": "e", "à": "a", "â": "a", "ç": "c", "ô": "o", "û": "u",
           "ù": "u", "ï": "i", "î": "i", "ÿ": "y", "É": "E", "È": "E", "Ê": "E", "À": "A", "Ç": "C",
           "Ô": "O", "Ÿ": "Y"}
EXTRA_STROKES = {"ë": 2, "ÿ": 2, "Ÿ": 2, "ï": 1, "î": 0}  # a diaeresis is two dots; "i" loses its dot


@pytest.mark.parametrize("accented, base", ACCENTS.items())
def test_an_accented_letter_is_its_base_letter_plus_the_accent(accented, base):
    area = EngravingArea(40, 40)  # room for every letter at 10 mm: same scale for both
    plain, marked = engrave(base, area, PLA), engrave(accented, area, PLA)
    assert plain.letter_height_mm == marked.letter_height_mm == 10.0
    assert len(marked.strokes) == len(plain.strokes) + EXTRA_STROKES.get(accented, 1)
    if base != "i":  # on "i" the accent takes the place of the dot
        assert marked.bbox[3] - marked.bbox[1] > plain.bbox[3] - plain.bbox[1] + 1.0


def test_ligatures_join_their_two_letters():
    assert len(engrave("œ", STAND, PLA).strokes) == len(engrave("oe", STAND, PLA).strokes)
    oe, ligature = engrave("oe", STAND, PLA).bbox, engrave("œ", STAND, PLA).bbox
    assert ligature[2] - ligature[0] < oe[2] - oe[0]


@pytest.mark.parametrize("font", FONTS)
def test_every_engravable_character_engraves(font):
    area = EngravingArea(40, 40, max_height_mm=10)
    for char in ENGRAVABLE.replace(" ", ""):
        engraving = engrave(char, area, PLA, font)
        assert engraving.strokes, char
        assert drawable(char) is None


def test_unknown_font_is_refused_naming_the_fonts():
    with pytest.raises(ValueError, match="futural"):
        engrave("Zoë", STAND, PLA, "gothicger")


@pytest.mark.parametrize("bad", [dict(width_mm=0, height_mm=10), dict(width_mm=10, height_mm=10, margin_mm=5),
                                 dict(width_mm=10, height_mm=10, min_height_mm=5, max_height_mm=4),
                                 dict(width_mm=10, height_mm=10, max_lines=3)])
def test_an_impossible_area_is_refused(bad):
    with pytest.raises(ValueError):
        EngravingArea(**bad)


def test_a_material_without_power_is_refused():
    with pytest.raises(ValueError):
        LaserMaterial(power=0, feed=1500)


def test_the_example_line_charsets_are_all_engravable():
    line = load_line(EXAMPLES / "line.toml")
    texts = [o for p in line.products.values() for o in p.options.values() if o.kind == "text"]
    assert texts
    for option in texts:
        assert set(option.charset or DEFAULT_CHARSET) <= set(ENGRAVABLE), option.name
    assert set(DEFAULT_CHARSET) <= set(ENGRAVABLE)
    assert set("éèêëàâçôûùïîœÉÈÊÀÇÔŒ'’") <= set(line.products["stand"].options["text"].charset)


EXAMPLE = load_line(EXAMPLES / "line.toml")
EXAMPLE_CHARSET = EXAMPLE.products["stand"].options["text"].charset


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=EXAMPLE_CHARSET, min_size=1, max_size=20).filter(str.strip),
       st.sampled_from(["stand", "keyring"]))
def test_any_allowed_text_engraves_inside_its_area_or_is_too_long(text, product):
    spec = EXAMPLE.products[product].engraving
    area = EngravingArea(spec.width_mm, spec.height_mm, spec.margin_mm, spec.min_height_mm,
                         spec.max_height_mm, spec.max_lines)
    try:
        engraving = engrave(text, area, PLA)
    except ValueError as exc:
        assert str(exc).startswith(f"text too long for the engraving area ({area.width_mm:g} x {area.height_mm:g} mm)")
        return
    assert area.min_height_mm <= engraving.letter_height_mm <= area.max_height_mm
    assert len(engraving.lines) <= area.max_lines
    assert all(inside(area, x, y) for _, x, y, _ in moves(engraving.gcode))
    assert all(not on for motion, *_, on in moves(engraving.gcode) if motion == "G0")


def test_the_preview_is_a_png_of_the_area_at_the_scale_asked(tmp_path):
    engraving = engrave("Hélène", STAND, PLA)
    path = preview_png(engraving, STAND, tmp_path / "preview.png", scale=5)
    assert path == tmp_path / "preview.png" and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (300, 100)
        dark = sum(image.convert("L").histogram()[:80])
    assert dark > 100  # the strokes are drawn


def test_an_engraving_records_what_was_laid_out():
    engraving = engrave("  Zoë  ", STAND, PLA)
    assert isinstance(engraving, Engraving)
    assert engraving.text == "Zoë" and engraving.lines == ("Zoë",)
    xmin, ymin, xmax, ymax = engraving.bbox
    points = [p for s in engraving.strokes for p in s]
    assert (xmin, ymin, xmax, ymax) == (min(x for x, _ in points), min(y for _, y in points),
                                        max(x for x, _ in points), max(y for _, y in points))

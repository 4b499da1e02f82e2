"""The inspection camera's judgement (edge.vision) on frames of the simulated world (edge.sim.parts).

The frames are rendered here: the example line's products, the laser's real toolpaths of real
names (firmware_bridge.engrave in the line file's engraving areas, material pla), the line's
colours, the tray's QR label; turned, shifted, blurred, noisy, under dimmer, brighter and warm
light, at 640x480 and at the camera's full 1640x1232. Each frame has a ground truth
(`edge.sim.parts.shots`); the confusion table (truth x decision) is printed with the output.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from trailer import EXAMPLES

from edge.config import load_line
from edge.sim.parts import COLOURS, LABELS, Shot, placement, render, shots
from edge.vision import (
    ColourRef,
    Expected,
    Finding,
    Layout,
    Stroke,
    Thresholds,
    annotate,
    delta_e,
    find_labels,
    hex_to_lab,
    inspect,
    measure,
    srgb_to_lab,
    stroke_mask,
)
from stations.inspection import expected_strokes, product_layout

LINE = load_line(EXAMPLES / "line.toml")
# The example line's layouts (mm from the QR symbol's top-left corner, x along its top edge, y
# down). The line file checks no keyring colour; the tests give it a colour region all the same.
STAND = product_layout(LINE.products["stand"])  # area 60 x 20 mm
KEYRING = Layout(label_mm=16, colour=(22, -2, 8, 20), engraving=product_layout(LINE.products["keyring"]).engraving)
LAYOUTS = {"stand": STAND, "keyring": KEYRING}
REFS = tuple(ColourRef.of_hex(name, srgb, 10.0) for name, srgb in COLOURS.items())
COLOUR = {ref.name: ref for ref in REFS}
HD = (1640, 1232)
# a small part beside its label, to turn it any way in the frame
SMALL = Layout(label_mm=16, colour=(20, 2, 6, 6), engraving=(20, 9, 6, 6))


@cache
def toolpath(product: str, text: str) -> tuple[Stroke, ...]:
    """The laser's strokes for `text` in `product`'s engraving area, as the laser station makes them."""
    return expected_strokes(LINE.products[product], {"text": text}, LINE)


def expected_of(shot: Shot) -> Expected:
    return Expected(labels=LABELS, colour=COLOUR[shot.ordered_colour] if shot.ordered_colour else None,
                    strokes=toolpath(shot.product, shot.ordered_text) if shot.ordered_text else (), others=REFS)


def frame_of(shot: Shot) -> np.ndarray:
    return shot.frame(LAYOUTS[shot.product], toolpath(shot.product, shot.engraved) if shot.engraved else None)


def good_frame(colour: str = "red", text: str = "Jean-Luc", **conditions) -> np.ndarray:
    return render(layout=STAND, label="T03", colour=colour, strokes=toolpath("stand", text), **conditions)


def good_expected(colour: str = "red", text: str = "Jean-Luc") -> Expected:
    return Expected(("T03",), COLOUR[colour], toolpath("stand", text), REFS)


@pytest.fixture(scope="module")
def judged() -> list[tuple[Shot, Finding]]:
    """Every shot of the rendered set, judged."""
    return [(shot, inspect(frame_of(shot), expected_of(shot), LAYOUTS[shot.product])) for shot in shots()]


def confusion(judged: list[tuple[Shot, Finding]]) -> dict[str, Counter]:
    table: dict[str, Counter] = {}
    for shot, finding in judged:
        table.setdefault(shot.truth, Counter())[finding.verdict] += 1
    return table


def table_text(table: dict[str, Counter], frames: int) -> str:
    lines = [f"inspection: truth x decision, {frames} rendered frames (640x480 and 1640x1232)",
             f"  {'truth':<20}{'pass':>6}{'reject':>8}{'retake':>8}"]
    lines += [f"  {truth:<20}{row['pass']:>6}{row['reject']:>8}{row['retake']:>8}" for truth, row in table.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------- the rendered set

def test_no_defective_part_or_unjudgeable_frame_ever_passes(judged, capsys):
    table = confusion(judged)
    with capsys.disabled():
        print("\n" + table_text(table, len(judged)))
    wrong_passes = [(s.truth, s.colour, s.condition, s.size, f.values) for s, f in judged
                    if s.truth != "good" and f.verdict == "pass"]
    assert wrong_passes == []
    for truth in ("wrong colour", "missing engraving", "other text", "text, none ordered"):
        assert table[truth]["reject"] == sum(table[truth].values()), truth
    for truth in ("other label", "no label", "too dark", "overexposed", "too blurred"):
        assert table[truth]["retake"] == sum(table[truth].values()), truth
    assert set(table) >= {"good", "wrong colour", "missing engraving", "other text", "other label", "no label",
                          "too dark", "overexposed", "too blurred"}


def test_good_parts_pass_under_moderate_conditions(judged):
    good = [(s, f) for s, f in judged if s.truth == "good"]
    assert {s.condition for s, _ in good} >= {"plain", "turned", "turned back, soft", "dimmer", "brighter",
                                              "warm light", "upside down"}
    assert {s.size for s, _ in good} == {(640, 480), HD}
    failed = [(s.colour, s.condition, s.size, f.reason) for s, f in good if f.verdict != "pass"]
    assert failed == []
    assert confusion(judged)["good"]["pass"] == len(good) >= 45


def test_each_decision_comes_from_the_right_check(judged):
    wrong = [(s.truth, s.colour, s.condition, s.size, f.verdict, f.check, f.reason) for s, f in judged
             if f.verdict != s.verdict or f.check not in s.checks]
    assert wrong == []


def test_reasons_name_the_check_and_its_numbers(judged):
    starts = {"exposure": ("too dark: label white L* ", "overexposed: "), "sharpness": ("blurred: label sharpness ",),
              "colour": ("colour: ΔE ",), "engraving": ("engraving: score ",),
              "label": ("label T07 is another part's (expected T03 or ", "no QR label in the frame")}
    for _, finding in judged:
        if finding.verdict == "pass":
            assert finding.reason == "" and finding.check == ""
            continue
        assert finding.reason.startswith(starts[finding.check]), finding.reason
        if finding.check != "label":
            assert len(re.findall(r"\d+(?:\.\d+)?", finding.reason)) >= 2, finding.reason  # a value and its limit
    by_truth = {shot.truth: finding.reason for shot, finding in judged}
    assert re.fullmatch(r"too dark: label white L\* \d+ < 35", by_truth["too dark"])
    assert re.fullmatch(r"overexposed: \d+% of .+ clipped \(at most 2%\)", by_truth["overexposed"])
    assert re.search(r"\(missing: 0\.0 mm² of ink", by_truth["missing engraving"])
    assert "(wrong or incomplete: recall" in by_truth["other text"]
    assert "(engraved where nothing was ordered" in by_truth["text, none ordered"]


def test_every_measured_value_is_kept_even_when_an_earlier_check_decides(judged):
    for shot, finding in judged:
        json.dumps(finding.values)  # JSON-able as it is
        if not finding.values.get("labels_seen"):
            assert finding.check == "label" and "frame_sharpness" in finding.values
            continue
        assert {"label", "px_per_mm", "angle_deg", "white_L", "saturated", "sharpness", "lab"} <= set(finding.values)
        assert "engraving_score" in finding.values
        if shot.ordered_colour:
            assert "delta_e" in finding.values
        assert set(finding.regions) == {"label", "colour", "engraving"}
        assert all(len(quad) == 4 for quad in finding.regions.values())


def test_scale_and_angle_are_measured_from_the_label(judged):
    from edge.sim.parts import CONDITIONS

    for shot, finding in judged:
        if "px_per_mm" not in finding.values:
            continue
        assert finding.values["px_per_mm"] == pytest.approx(shot.size[0] / 120.0, rel=0.01)
        angle = CONDITIONS[shot.condition].get("angle_deg", 0.0)
        assert abs((finding.values["angle_deg"] - angle + 180) % 360 - 180) < 0.5


# ---------------------------------------------------------------- single behaviours

def test_a_wrong_colour_says_what_it_looks_like():
    finding = inspect(good_frame("blue"), good_expected("red"), STAND)
    assert (finding.verdict, finding.check) == ("reject", "colour")
    assert re.fullmatch(r"colour: ΔE \d+\.\d from red \(tolerance 10\); looks blue", finding.reason)
    assert finding.values["nearest"] == "blue"


def test_the_colour_stays_put_when_the_light_changes():
    for colour in COLOURS:
        nominal = COLOUR[colour].lab
        for light in ({}, {"light": 0.3}, {"light": 1.25}, {"tint": (1.2, 1.0, 0.7)}, {"tint": (0.8, 0.95, 1.2)}):
            finding = measure(good_frame(colour, noise=3, **light), STAND)
            assert finding.verdict == "pass", (colour, light, finding.reason)
            assert delta_e(finding.values["lab"], nominal) < 2.0, (colour, light, finding.values["lab"])


def test_measure_calibrates_without_expectations_and_retakes_what_it_cannot_measure():
    finding = measure(good_frame("green", angle_deg=-8), STAND)
    assert finding.verdict == "pass" and finding.reason == ""
    assert delta_e(finding.values["lab"], hex_to_lab(COLOURS["green"])) < 2.0
    dark = measure(good_frame("green", light=0.06), STAND)
    assert (dark.verdict, dark.check) == ("retake", "exposure") and "lab" in dark.values
    blank = measure(np.full((480, 640, 3), 120, np.uint8), STAND)
    assert (blank.verdict, blank.check, blank.reason) == ("retake", "label", "no QR label in the frame")


def test_the_expected_label_wins_among_several():
    def half(label: str, colour: str) -> np.ndarray:
        return render(layout=SMALL, label=label, colour=colour, strokes=None, size=(320, 480), field_mm=60)

    frame = np.hstack([half("T07", "blue"), half("T03", "red")])
    assert sorted(label.text for label in find_labels(frame)) == ["T03", "T07"]
    ours = inspect(frame, Expected(("T03",), COLOUR["red"], None, REFS), SMALL)
    assert ours.verdict == "pass", ours.reason
    assert ours.values["label"] == "T03" and ours.values["delta_e"] < 2
    theirs = inspect(frame, Expected(("T05",), COLOUR["red"], None, REFS), SMALL)
    assert (theirs.verdict, theirs.check) == ("retake", "label")
    assert re.fullmatch(r"label (T07, T03|T03, T07) are other parts' \(expected T05\)", theirs.reason)


def test_a_part_partly_out_of_view_is_a_retake():
    finding = inspect(good_frame(offset_mm=(30.0, 0.0)), good_expected(), STAND)
    assert (finding.verdict, finding.check) == ("retake", "engraving")
    assert re.fullmatch(r"engraving: the area is not fully in view \(\d+%\)", finding.reason)


def test_an_area_with_no_text_ordered_must_stay_blank():
    blank = render(layout=STAND, label="T03", colour="black", strokes=None, noise=4)
    assert inspect(blank, Expected(("T03",), COLOUR["black"], ()), STAND).verdict == "pass"
    engraved = inspect(good_frame("black", "Noël"), Expected(("T03",), COLOUR["black"], ()), STAND)
    assert (engraved.verdict, engraved.check) == ("reject", "engraving")
    assert engraved.values["ink_mm2"] > 5


def test_the_engraving_is_not_checked_when_no_toolpath_is_given():
    finding = inspect(good_frame(text="Zoë"), Expected(("T03",), COLOUR["red"], None), STAND)
    assert finding.verdict == "pass" and "engraving_score" not in finding.values


def test_one_missing_letter_fails_the_engraving():
    # the laser stopped before the last letter: the whole still looks much like the name
    strokes = toolpath("stand", "Jean-Luc")
    cut = max(x for stroke in strokes for x, _ in stroke) - 4.0
    frame = render(layout=STAND, label="T03", colour="white", noise=3,
                   strokes=tuple(s for s in strokes if max(x for x, _ in s) < cut))
    finding = inspect(frame, good_expected("white"), STAND)
    assert (finding.verdict, finding.check) == ("reject", "engraving")
    assert finding.values["engraving_f1"] > finding.values["engraving_score"]


# ---------------------------------------------------------------- colour and geometry

def test_srgb_to_lab_of_known_colours():
    assert srgb_to_lab((255, 255, 255)) == pytest.approx((100.0, 0.0, 0.0), abs=0.5)
    assert srgb_to_lab((255, 0, 0)) == pytest.approx((53.24, 80.09, 67.20), abs=0.5)
    assert srgb_to_lab((0, 0, 255)) == pytest.approx((32.30, 79.19, -107.86), abs=0.5)
    assert srgb_to_lab((0, 0, 0)) == pytest.approx((0.0, 0.0, 0.0), abs=0.01)
    assert srgb_to_lab((119, 119, 119))[0] == pytest.approx(50.0, abs=0.5)
    assert srgb_to_lab(np.zeros((2, 3, 3), np.uint8)).shape == (2, 3, 3)
    assert hex_to_lab("#ff0000") == pytest.approx(tuple(srgb_to_lab((255, 0, 0))))
    with pytest.raises(ValueError, match="#rrggbb"):
        hex_to_lab("red")


def test_delta_e_is_the_straight_distance_in_lab():
    assert delta_e((50, 0, 0), (53, 4, 0)) == pytest.approx(5.0)
    assert delta_e((53, 4, 0), (50, 0, 0)) == delta_e((50, 0, 0), (53, 4, 0))
    assert delta_e((40, 10, -10), (40, 10, -10)) == 0.0


def test_stroke_mask_puts_strokes_where_they_are_with_y_up():
    assert not stroke_mask((), (60, 20), 8, 0.3).any()
    assert stroke_mask((), (60, 20), 8, 0.3).shape == (160, 480)
    top = stroke_mask((((10.0, 15.0), (50.0, 15.0)),), (60, 20), 8, 0.3)  # 15 mm up: 5 mm from the top
    rows, cols = np.nonzero(top)
    assert set(rows) <= {38, 39, 40, 41} and 2 <= len(set(rows)) <= 3
    assert cols.min() in (78, 79, 80) and cols.max() in (399, 400, 401)  # round ends
    bottom = stroke_mask((((10.0, 1.0), (50.0, 1.0)),), (60, 20), 8, 0.3)
    assert np.nonzero(bottom)[0].mean() == pytest.approx(160 - 8 - 0.5, abs=1)
    upright = stroke_mask((((30.0, 2.0), (30.0, 18.0)),), (60, 20), 8, 1.0)
    rows, cols = np.nonzero(upright)
    assert cols.mean() == pytest.approx(239.5, abs=0.6) and 7 <= len(set(cols)) <= 9
    assert rows.min() == pytest.approx(16, abs=5) and rows.max() == pytest.approx(143, abs=5)


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 180.0, -90.0, -135.0])
@pytest.mark.parametrize("size", [(640, 480), HD])
def test_find_labels_gives_the_symbol_corners_as_printed(angle, size):
    frame = render(layout=SMALL, label="T03", colour="green", strokes=None, size=size, angle_deg=angle, noise=2)
    [label] = find_labels(frame)
    to_px = placement(layout=SMALL, label="T03", size=size, angle_deg=angle)
    printed = [(0, 0), (16, 0), (16, 16), (0, 16)]  # top-left, top-right, bottom-right, bottom-left
    truth = np.array([to_px @ (x, y, 1.0) for x, y in printed])
    px_per_mm = size[0] / 120.0
    assert label.text == "T03"
    assert np.abs(np.array(label.corners) - truth).max() < 0.05 * px_per_mm  # 0.05 mm


@pytest.mark.parametrize("text", ["T03", "https://fabrique.example/jobs/A7K2-20261118-0042"])  # 21 and 29 modules
def test_find_labels_finds_the_symbol_size_when_the_decoder_does_not_say(monkeypatch, text):
    import zxingcpp

    real = zxingcpp.read_barcodes

    class Older:  # zxing-cpp 2.x results carry no `extra` (the symbol's version)
        def __init__(self, code):
            self.text, self.position = code.text, code.position

    monkeypatch.setattr(zxingcpp, "read_barcodes", lambda *args, **kwargs: [Older(c) for c in real(*args, **kwargs)])
    frame = render(layout=SMALL, label=text, colour="white", strokes=None, size=HD, angle_deg=-20, noise=2)
    [label] = find_labels(frame)
    to_px = placement(layout=SMALL, label=text, size=HD, angle_deg=-20)
    truth = np.array([to_px @ (x, y, 1.0) for x, y in [(0, 0), (16, 0), (16, 16), (0, 16)]])
    assert label.text == text
    assert np.abs(np.array(label.corners) - truth).max() < 0.05 * HD[0] / 120.0


def test_find_labels_reads_grayscale_and_finds_nothing_in_a_blank_frame():
    frame = good_frame()
    gray = frame.mean(axis=2).astype(np.uint8)
    assert [label.text for label in find_labels(gray)] == ["T03"]
    assert find_labels(np.zeros((480, 640, 3), np.uint8)) == []


# ---------------------------------------------------------------- never raising, never passing garbage

GARBAGE = {
    "1x1": np.zeros((1, 1, 3), np.uint8),
    "grayscale": np.full((480, 640), 128, np.uint8),
    "all black": np.zeros((480, 640, 3), np.uint8),
    "all white": np.full((480, 640, 3), 255, np.uint8),
    "noise": np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8),
    "float with NaN": np.full((48, 64, 3), np.nan),
    "empty": np.zeros((0, 0, 3), np.uint8),
    "one row": np.zeros((640,), np.uint8),
    "five channels": np.zeros((48, 64, 5), np.uint8),
    "not an array": "frame.jpg",
    "None": None,
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_is_a_retake_not_an_exception(name):
    finding = inspect(GARBAGE[name], good_expected(), STAND)
    assert (finding.verdict, finding.check) == ("retake", "label")
    assert finding.reason.startswith(("no QR label in the frame", "not a camera frame"))
    json.dumps(finding.values)
    assert annotate(GARBAGE[name], finding).ndim == 3


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(st.sampled_from([np.uint8, np.float32, np.int16]),
                  hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40)))
def test_any_array_is_judged_without_raising(frame):
    finding = inspect(frame, good_expected(), STAND)
    assert finding.verdict == "retake"
    assert measure(frame, STAND).verdict == "retake"


def test_annotate_draws_on_a_copy():
    frame = good_frame(angle_deg=10)
    before = frame.copy()
    finding = inspect(frame, good_expected("blue"), STAND)
    out = annotate(frame, finding)
    assert np.array_equal(frame, before)
    assert out.shape == frame.shape and out.dtype == np.uint8
    x, y = (round(v) for v in finding.regions["engraving"][0])
    assert not np.array_equal(out[y - 1:y + 2, x - 1:x + 2], frame[y - 1:y + 2, x - 1:x + 2])
    assert not np.array_equal(out[:20, :200], frame[:20, :200])  # the verdict is written


def test_thresholds_decide():
    finding = inspect(good_frame(), good_expected(), STAND, Thresholds(min_sharpness=9.0))
    assert (finding.verdict, finding.check) == ("retake", "sharpness")
    assert re.fullmatch(r"blurred: label sharpness \d\.\d\d < 9", finding.reason)
    strict = inspect(good_frame(), Expected(("T03",), ColourRef("red", COLOUR["red"].lab, 0.0)), STAND)
    assert (strict.verdict, strict.check) == ("reject", "colour")
    assert 0 < strict.values["delta_e"] < 2


def test_the_rendered_colours_are_the_line_files_nominal_ones():
    assert {name: colour.srgb for name, colour in LINE.colours.items()} == COLOURS

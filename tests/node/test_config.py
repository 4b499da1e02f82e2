"""Station and line files: a technician gets every mistake at once, located by file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trailer import EXAMPLES, run_edge

from edge.config import ConfigError, load_line, load_station, parse_pin

LINE_FILE = EXAMPLES / "line.toml"


def station_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(body.replace("@LINE@", str(LINE_FILE)), encoding="utf-8")
    return path


GOOD = """\
[node]
id = "laser-1"
line = "demo"
line_file = "@LINE@"

[station]
kind = "laser"

[hardware.fan]
type = "digital_output"
pin = "GPIO22"
safe_state = "off"
"""


def test_every_example_station_and_line_file_passes_check_config():
    files = sorted(str(p) for p in EXAMPLES.glob("*.toml"))
    assert len(files) == 7
    result = run_edge("check-config", *files)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == 7


def test_five_mistakes_give_five_located_errors_and_exit_1(tmp_path):
    path = station_file(tmp_path, """\
[node]
id = "Laser 1"
line = "demo"
line_file = "@LINE@"

[mqtt]
port = 70000
usernmae = "laser-1"

[station]
kind = "lazer"

[hardware.fan]
type = "digital_output"
pin = 31
safe_state = "off"
""")
    result = run_edge("check-config", str(path))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{path}:")
              and re.match(rf"{re.escape(str(path))}:\d+: ", line)]
    assert len(errors) == 5, result.stderr
    located = {int(line.split(":")[1]): line for line in errors}
    assert "[node] id:" in located[2]
    assert "[mqtt] port: 70000 is out of range" in located[7]
    assert "did you mean 'username'" in located[8]
    assert "did you mean 'laser'" in located[11]
    assert "[hardware.fan] pin: GPIO31 does not exist" in located[15]
    assert "Traceback" not in result.stderr


def test_missing_file_exits_2_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    result = run_edge("check-config", str(missing))
    assert result.returncode == 2
    assert f"{missing}: file not found" in result.stderr


def test_broken_toml_names_the_line(tmp_path):
    path = station_file(tmp_path, GOOD + "\n[hardware.pump\ntype = 1\n")
    with pytest.raises(ConfigError) as err:
        load_station(path)
    assert len(err.value.issues) == 1
    issue = err.value.issues[0]
    assert issue.line == GOOD.count("\n") + 2
    assert "TOML syntax error" in issue.message


def test_good_station_loads_typed_values(tmp_path):
    config = load_station(station_file(tmp_path, GOOD))
    assert config.node.id == "laser-1"
    assert config.mqtt.port == 1883 and config.mqtt.username == "laser-1"
    fan = config.hardware["fan"]
    assert (fan.pin, fan.safe_state, fan.is_output) == (22, False, True)


def test_two_devices_on_one_pin_are_named_both(tmp_path):
    path = station_file(tmp_path, GOOD + """
[hardware.pump]
type = "digital_output"
pin = "BOARD15"
safe_state = "off"
""")
    with pytest.raises(ConfigError) as err:
        load_station(path)
    (issue,) = err.value.issues
    assert (issue.section, issue.key) == ("hardware.pump", "pin")
    assert "GPIO22 is already used by [hardware.fan]" in issue.message


def test_wrong_types_are_reported_not_raised(tmp_path):
    path = station_file(tmp_path, """\
node = "oops"
station = 3

[hardware]
fan = "GPIO4"
""")
    with pytest.raises(ConfigError) as err:
        load_station(path)
    text = str(err.value)
    assert "[node] must be a table" in text
    assert "[station] must be a table" in text
    assert "[hardware.fan] must be a table" in text


def test_unknown_section_suggests_the_right_one(tmp_path):
    path = station_file(tmp_path, GOOD + '\n[consle]\nenabled = true\n')
    with pytest.raises(ConfigError) as err:
        load_station(path)
    assert "unknown section (did you mean 'console'?)" in str(err.value)


def test_station_reports_a_broken_line_file(tmp_path):
    line = tmp_path / "line.toml"
    line.write_text(LINE_FILE.read_text().replace('"printer", "transfer"', '"priter", "transfer"'))
    path = station_file(tmp_path, GOOD.replace("@LINE@", "line.toml"))
    with pytest.raises(ConfigError) as err:
        load_station(path)
    (issue,) = err.value.issues
    assert issue.key == "line_file" and issue.line == 4
    assert "'priter' is not a station kind" in issue.message


def test_line_file_rejects_bad_keys_and_routes(tmp_path):
    path = tmp_path / "line.toml"
    path.write_text("""\
[line]
id = "demo"

[orders.keys]
k1 = "not base64!"
k2 = "AAAA"

[products.stand]
route = ["intake", "intake"]
""")
    with pytest.raises(ConfigError) as err:
        load_line(path)
    messages = [str(i) for i in err.value.issues]
    assert any("k1: is not valid base64" in m for m in messages)
    assert any("k2: an Ed25519 public key is 32 bytes, this one is 3" in m for m in messages)
    assert any("names a station kind twice" in m for m in messages)


def test_example_line_has_engraving_areas_and_materials():
    line = load_line(LINE_FILE)
    stand, keyring = line.products["stand"].engraving, line.products["keyring"].engraving
    assert (stand.width_mm, stand.height_mm, stand.max_lines, stand.material) == (60, 20, 2, "pla")
    assert (keyring.width_mm, keyring.height_mm, keyring.max_lines) == (30, 10, 1)
    assert stand.text_option == keyring.text_option == "text"
    assert (line.materials["pla"].power, line.materials["pla"].feed, line.materials["pla"].passes) == (300, 1500, 1)


ENGRAVED_LINE = """\
[line]
id = "demo"

[orders.keys]
k1 = "xZ39dE2JZBSBQkWAxi+u9JFBMLNA1UyfF/pLfOBrKhI="

[products.stand]
route = ["intake", "laser"]

[products.stand.options.text]
type = "text"

[products.stand.engraving]
width_mm = 60
height_mm = 20
material = "pal"

[materials.pla]
power = 300
feed = 1500
"""


def line_error_at(tmp_path: Path, text: str, key: str) -> str:
    path = tmp_path / "line.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_line(path)
    issues = [i for i in err.value.issues if i.key == key]
    assert issues, str(err.value)
    line = text.splitlines().index(next(t for t in text.splitlines() if t.startswith(f"{key} "))) + 1
    assert issues[0].line == line
    return str(issues[0])


def test_an_engraving_naming_an_unknown_material_is_a_located_error(tmp_path):
    message = line_error_at(tmp_path, ENGRAVED_LINE, "material")
    assert "[products.stand.engraving] material: no material [materials.pal] (materials: pla)" in message
    assert "did you mean 'pla'" in message


def test_a_decomposed_accent_in_a_charset_is_read_as_one_letter(tmp_path):
    path = tmp_path / "line.toml"
    path.write_text(ENGRAVED_LINE.replace('"pal"', '"pla"').replace('type = "text"', 'type = "text"\ncharset = "Le\u0301a"'))
    assert load_line(path).products["stand"].options["text"].charset == "Léa"


@pytest.mark.parametrize("change, key, message", [
    (("width_mm = 60", "width_mm = \"wide\""), "width_mm", "must be a number of mm"),
    (("height_mm = 20", "height_mm = 0.2"), "height_mm", "0.2 is out of range 1..1000 mm"),
    (("material =", "max_lines = 3\nmaterial ="), "max_lines", "3 is out of range 1..2"),
    (("material =", "min_height_mm = 12\nmax_height_mm = 8\nmaterial ="), "min_height_mm", "more than max_height_mm"),
    (("material =", "margin_mm = 10\nmaterial ="), "margin_mm", "leaves nothing of"),
    (("material =", "text_option = \"txt\"\nmaterial ="), "text_option", "did you mean 'text'"),
    (("material =", "widht_mm = 5\nmaterial ="), "widht_mm", "unknown key"),
    (("power = 300", "power = 0"), "power", "0 is out of range 1..1000"),
    (("feed = 1500", "feed = 50000"), "feed", "50000 is out of range 10..20000"),
    (("feed = 1500", "feed = 1500\npasses = 9"), "passes", "9 is out of range 1..5"),
])
def test_bad_engraving_and_material_values_are_located_errors(tmp_path, change, key, message):
    text = ENGRAVED_LINE.replace('"pal"', '"pla"').replace(*change)
    assert message in line_error_at(tmp_path, text, key)


INSPECTED_LINE = """\
[line]
id = "demo"

[orders.keys]
k1 = "xZ39dE2JZBSBQkWAxi+u9JFBMLNA1UyfF/pLfOBrKhI="

[products.stand]
route = ["intake", "laser", "inspection", "pickup"]

[products.stand.options.colour]
type = "choice"
choices = ["red", "blue"]

[products.stand.options.text]
type = "text"

[products.stand.engraving]
width_mm = 60
height_mm = 20
material = "pla"

[products.stand.inspection]
label_mm = 16
colour_region = [22, -4, 10, 28]
engraving_at = [36, -2]
redo = { engraving = "laser" }

[materials.pla]
power = 300
feed = 1500

[colours.red]
srgb = "#c0282d"
tolerance = 12

[colours.blue]
srgb = "#1e50b4"
"""


def test_example_line_says_where_the_camera_finds_things_and_what_each_colour_is():
    line = load_line(LINE_FILE)
    stand = line.products["stand"].inspection
    assert (stand.label_mm, stand.colour_region, stand.engraving_at) == (16, (22, -4, 10, 28), (36, -2))
    assert stand.redo == {"engraving": "laser"} and line.products["keyring"].inspection.colour_region is None
    assert set(line.colours) == set(line.products["stand"].options["colour"].choices)
    assert line.colours["blue"].srgb == "#1e50b4" and line.colours["blue"].tolerance == 12


@pytest.mark.parametrize("change, key, message", [
    (('srgb = "#c0282d"', 'srgb = "red"'), "srgb", "'red' is not a colour \"#rrggbb\""),
    (("tolerance = 12", "tolerance = 0"), "tolerance", "0 is out of range 0.5..100"),
    (("label_mm = 16", "label_mm = 2"), "label_mm", "2 is out of range 5..200 mm"),
    (("colour_region = [22, -4, 10, 28]", "colour_region = [22, -4, 10]"), "colour_region",
     "must be [x, y, width, height] in mm (4 numbers)"),
    (("colour_region = [22, -4, 10, 28]", "colour_region = [22, -4, 0, 28]"), "colour_region", "sizes must be above 0"),
    (('redo = { engraving = "laser" }', 'redo = { engraving = "pickup" }'), "redo",
     "engraving = 'pickup': must name a step of the route before the inspection"),
    (('redo = { engraving = "laser" }', 'redo = { engravng = "laser" }'), "redo", "did you mean 'engraving'"),
    (('choices = ["red", "blue"]', 'choices = ["red", "blue", "pink"]'), "colour_region",
     "colours without a [colours.<name>] to compare with: pink"),
    (("engraving_at = [36, -2]", "engraving_at = [36, -2]\nlable_mm = 3"), "lable_mm", "unknown key"),
])
def test_bad_colours_and_inspection_values_are_located_errors(tmp_path, change, key, message):
    assert message in line_error_at(tmp_path, INSPECTED_LINE.replace(*change), key)


def test_an_engraving_to_check_on_a_product_without_an_engraving_area_is_an_error(tmp_path):
    text = INSPECTED_LINE.replace('[products.stand.engraving]\nwidth_mm = 60\nheight_mm = 20\nmaterial = "pla"\n', "")
    assert "the product has no [engraving] area to check" in line_error_at(tmp_path, text, "engraving_at")


@pytest.mark.parametrize("spec, bcm, error", [
    (17, 17, ""), ("GPIO17", 17, ""), ("bcm4", 4, ""), ("BOARD11", 17, ""), ("J8:40", 21, ""),
    (28, None, "does not exist"), ("BOARD6", None, "GND pin"), ("BOARD41", None, "does not exist"),
    ("WPI0", None, "WiringPi"), ("P1", None, "not a pin name"), (True, None, "not a boolean"),
])
def test_pin_names_follow_gpiozero_and_the_header(spec, bcm, error):
    got, message = parse_pin(spec)
    assert got == bcm
    assert error in message if error else message == ""


toml_values = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.text(max_size=12),
                        st.lists(st.integers(0, 5000), max_size=3))
keys = st.sampled_from(["id", "line", "kind", "type", "pin", "port", "safe_state", "host",
                        "baudrate", "source", "path", "enabled", "tls", "resolution", "zzz"])
sections = st.sampled_from(["node", "mqtt", "station", "console", "hardware.a", "hardware.b", "bogus"])


def _render(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode() + '"'
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(sections, st.dictionaries(keys, toml_values, max_size=6), max_size=6))
def test_any_station_file_gives_a_result_or_located_errors_never_a_crash(tmp_path, doc):
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {_render(v)}\n" for k, v in body.items())
                   for name, body in doc.items())
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_station(path)
    except ConfigError as err:
        assert err.issues
        for issue in err.issues:
            assert str(issue).startswith(f"{path}:")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_loader(tmp_path, blob):
    path = tmp_path / "garbage.toml"
    path.write_bytes(blob)
    try:
        load_station(path)
    except ConfigError as err:
        assert err.issues


@pytest.mark.parametrize(("port", "message"), [
    ("COM3", "'COM3' is a Windows port name; on the Pi a serial port is a path like /dev/ttyUSB0"),
    ("dev/ttyUSB0", "'dev/ttyUSB0' is not an absolute path: did you mean \"/dev/ttyUSB0\"?"),
])
def test_a_port_that_is_not_a_device_path_is_a_located_error(tmp_path, port, message):
    path = station_file(tmp_path, GOOD + f'\n[hardware.grbl]\ntype = "serial"\nport = "{port}"\nprotocol = "grbl"\n')
    with pytest.raises(ConfigError) as err:
        load_station(path)
    assert any(message in str(i) and "[hardware.grbl] port" in str(i) for i in err.value.issues), err.value.issues
    console = station_file(tmp_path, GOOD + f'\n[console]\nserial_port = "{port}"\n')
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_station(console)


def test_a_pin_on_the_console_uarts_tx_or_rx_is_an_error_while_the_console_uses_it(tmp_path):
    body = GOOD.replace('pin = "GPIO22"', 'pin = "GPIO14"')
    with pytest.raises(ConfigError) as err:
        load_station(station_file(tmp_path, body + '\n[console]\nserial_port = "/dev/ttyAMA0"\n'))
    assert any("[hardware.fan] pin" in str(i) and "GPIO14 is the console UART's TX (header pin 8)" in str(i)
               for i in err.value.issues), err.value.issues
    assert load_station(station_file(tmp_path, body + '\n[console]\nserial_port = "/dev/ttyUSB0"\n'))  # USB: free


def test_a_station_on_another_line_than_its_line_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[node\] line: 'trailer-2' is not the id of its line file .* \('demo'\)"):
        load_station(station_file(tmp_path, GOOD.replace('line = "demo"', 'line = "trailer-2"')))


def test_check_config_refuses_two_station_files_with_one_node_id_and_warns_of_a_missing_password(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = station_file(a, GOOD + f'\n[mqtt]\npassword_file = "{tmp_path / "nope.password"}"\n')
    second = station_file(b, GOOD)
    result = run_edge("check-config", str(first), str(second))
    assert result.returncode == 1
    assert f"{second}: [node] id: 'laser-1' is also the id in {first}" in result.stderr
    assert f"warning: [mqtt] password_file {tmp_path / 'nope.password'} does not exist" in result.stderr

"""Home Assistant discovery as Home Assistant reads it today: default entity ids, an origin,
counters as diagnostics, sensors only for what the station has, its safety circuits."""

from __future__ import annotations

import json

from edge import __version__
from edge.homeassistant import discovery

HARDWARE = {"estop": "emergency_stop", "lid": "door_interlock", "scanner": "scanner", "exhaust": "digital_output"}


def configs(hardware: dict[str, str], url: str = "http://hub.local/") -> dict[str, dict]:
    return {topic: json.loads(payload) if payload else None
            for topic, payload in discovery("laser-1", "demo", "laser", "Laser engraving", hardware, url)}


def test_every_entity_has_a_default_entity_id_and_the_origin_and_no_object_id():
    for topic, config in configs(HARDWARE).items():
        component = topic.split("/")[1]
        assert "object_id" not in config, topic
        assert config["default_entity_id"] == f"{component}.{config['unique_id']}", topic
        assert config["default_entity_id"].startswith(f"{component}.fabrique_demo_laser_1_")
        assert config["origin"] == {"name": "fabrique-edge", "sw_version": __version__,
                                    "support_url": "http://hub.local/"}


def test_counters_are_diagnostics_and_the_numbers_to_chart_are_measurements():
    sensors = {t.split("/")[3]: c for t, c in configs(HARDWARE).items() if t.startswith("homeassistant/sensor/")}
    for counter in ("events", "errors", "outbox", "scans"):
        assert sensors[counter]["entity_category"] == "diagnostic", counter
    for shown in ("state", "mode", "job", "jobs_per_hour", "step_last", "step_mean", "queue"):
        assert "entity_category" not in sensors[shown], shown
    assert sensors["mode"]["value_template"] == "{{ value_json.mode }}"
    assert sensors["jobs_per_hour"]["state_class"] == "measurement"
    assert (sensors["step_mean"]["device_class"], sensors["step_mean"]["unit_of_measurement"]) == ("duration", "s")
    assert sensors["queue"]["value_template"] == "{{ value_json.metrics.queue }}"


def test_a_station_without_a_scanner_has_no_scanner_sensor_and_an_old_one_is_removed():
    found = configs({"estop": "emergency_stop"})
    assert found["homeassistant/sensor/laser-1/scans/config"] is None  # an empty retained config removes it
    assert configs(HARDWARE)["homeassistant/sensor/laser-1/scans/config"]["name"] == "Codes scanned"


def test_emergency_stops_and_doors_are_binary_sensors_of_their_class():
    found = configs(HARDWARE)
    estop = found["homeassistant/binary_sensor/laser-1/safety_estop/config"]
    lid = found["homeassistant/binary_sensor/laser-1/safety_lid/config"]
    assert (estop["device_class"], lid["device_class"]) == ("safety", "door")
    assert estop["state_topic"] == "fabrique/demo/node/laser-1/state"
    assert estop["value_template"] == "{{ 'ON' if value_json.safety['estop'] == 'tripped' else 'OFF' }}"
    assert not [t for t in found if "exhaust" in t]  # an output is no safety circuit
    online = found["homeassistant/binary_sensor/laser-1/online/config"]
    assert (online["device_class"], online["payload_on"]) == ("connectivity", "online")


def test_no_support_url_without_a_public_url():
    config = configs({}, url="")["homeassistant/sensor/laser-1/state/config"]
    assert config["origin"] == {"name": "fabrique-edge", "sw_version": __version__}

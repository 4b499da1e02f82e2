"""Home Assistant MQTT discovery: one device per node, with its state, mode, job, metrics,
counters, safety circuits and online status. Pure: returns (topic, payload) pairs for the sync
to publish (retained); an empty payload removes an entity an older version announced."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edge import __version__
from edge.topics import HA_PREFIX, Topics, ha_config_topic

HA_STATUS_TOPIC = f"{HA_PREFIX}/status"
SENSORS = (
    # object id, name, template over the state payload, icon, extra config
    ("state", "Station state", "{{ value_json.state }}", "mdi:factory", {}),
    ("mode", "Mode", "{{ value_json.mode }}", "mdi:hand-back-right", {}),
    ("job", "Current job", "{{ value_json.job or 'none' }}", "mdi:clipboard-text", {}),
    ("reason", "Fault reason", "{{ value_json.reason or '' }}", "mdi:alert", {}),
    ("jobs_per_hour", "Jobs per hour", "{{ value_json.metrics.jobs_per_hour }}", "mdi:speedometer",
     {"state_class": "measurement", "unit_of_measurement": "jobs/h"}),
    ("step_last", "Last step", "{{ value_json.metrics.step_last_s }}", "mdi:timer-outline",
     {"device_class": "duration", "state_class": "measurement", "unit_of_measurement": "s"}),
    ("step_mean", "Step mean (last 20)", "{{ value_json.metrics.step_mean_s }}", "mdi:timer-sand",
     {"device_class": "duration", "state_class": "measurement", "unit_of_measurement": "s"}),
    ("queue", "Jobs waiting", "{{ value_json.metrics.queue }}", "mdi:tray-full", {"state_class": "measurement"}),
)
DIAGNOSTIC = {"entity_category": "diagnostic"}
COUNTERS = (
    ("events", "Events applied", "{{ value_json.counters.events }}", "mdi:counter",
     {**DIAGNOSTIC, "state_class": "total_increasing"}),
    ("errors", "Errors", "{{ value_json.counters.errors }}", "mdi:alert-circle",
     {**DIAGNOSTIC, "state_class": "total_increasing"}),
    ("outbox", "Events waiting to sync", "{{ value_json.counters.outbox }}", "mdi:tray-arrow-up",
     {**DIAGNOSTIC, "state_class": "measurement"}),
)
SCANS = ("scans", "Codes scanned", "{{ value_json.counters.scans }}", "mdi:qrcode-scan",
         {**DIAGNOSTIC, "state_class": "total_increasing"})
SAFETY_CLASSES = {"emergency_stop": "safety", "door_interlock": "door"}  # on: unsafe / open


def discovery(node: str, line: str, kind: str, title: str, hardware: Mapping[str, str] | None = None,
              support_url: str = "") -> list[tuple[str, bytes]]:
    """The retained discovery configs of one node (`hardware`: device name -> type)."""
    hardware = hardware or {}
    topics = Topics(line)
    uid = f"fabrique_{line}_{node}".replace("-", "_")
    device = {"identifiers": [uid], "name": f"{title} ({node})", "manufacturer": "fabrique-edge",
              "model": f"{kind} station", "sw_version": __version__}
    origin = {"name": "fabrique-edge", "sw_version": __version__}
    if support_url:
        origin["support_url"] = support_url
    common: dict[str, Any] = {"device": device, "origin": origin, "availability": [
        {"topic": topics.status(node), "value_template": "{{ value_json.state }}",
         "payload_available": "online", "payload_not_available": "offline"}]}

    def entity(component: str, object_id: str, name: str, **config: Any) -> tuple[str, bytes]:
        body = {"name": name, "unique_id": f"{uid}_{object_id}",
                "default_entity_id": f"{component}.{uid}_{object_id}", **config, **common}
        return ha_config_topic(component, node, object_id), json.dumps(body).encode()

    out: list[tuple[str, bytes]] = []
    scanner = any(t == "scanner" for t in hardware.values())
    for object_id, name, template, icon, extra in (*SENSORS, *COUNTERS, *((SCANS,) if scanner else ())):
        out.append(entity("sensor", object_id, name, state_topic=topics.state(node), value_template=template,
                          icon=icon, **extra))
    if not scanner:  # announced by earlier versions on every node: removed where there is no scanner
        out.append((ha_config_topic("sensor", node, "scans"), b""))
    for device_name, device_type in sorted(hardware.items()):
        if device_type in SAFETY_CLASSES:
            label = "Emergency stop" if device_type == "emergency_stop" else "Door"
            out.append(entity("binary_sensor", f"safety_{device_name}", f"{label} {device_name}",
                              state_topic=topics.state(node), device_class=SAFETY_CLASSES[device_type],
                              value_template=f"{{{{ 'ON' if value_json.safety['{device_name}'] == 'tripped' "
                                             f"else 'OFF' }}}}"))
    online = {"name": "Online", "unique_id": f"{uid}_online", "default_entity_id": f"binary_sensor.{uid}_online",
              "state_topic": topics.status(node), "value_template": "{{ value_json.state }}",
              "payload_on": "online", "payload_off": "offline", "device_class": "connectivity",
              "entity_category": "diagnostic", "device": device, "origin": origin}
    out.append((ha_config_topic("binary_sensor", node, "online"), json.dumps(online).encode()))
    return out

"""Home Assistant MQTT discovery: one device per node, with its state, job, counters and
online status. Pure: returns (topic, payload) pairs for the sync to publish (retained)."""

from __future__ import annotations

import json

from edge import __version__
from edge.topics import HA_PREFIX, Topics, ha_config_topic

HA_STATUS_TOPIC = f"{HA_PREFIX}/status"
SENSORS = (
    # object id, name, template over the state payload, icon
    ("state", "Station state", "{{ value_json.state }}", "mdi:factory"),
    ("job", "Current job", "{{ value_json.job or 'none' }}", "mdi:clipboard-text"),
    ("reason", "Fault reason", "{{ value_json.reason or '' }}", "mdi:alert"),
    ("events", "Events applied", "{{ value_json.counters.events }}", "mdi:counter"),
    ("scans", "Codes scanned", "{{ value_json.counters.scans }}", "mdi:qrcode-scan"),
    ("errors", "Errors", "{{ value_json.counters.errors }}", "mdi:alert-circle"),
    ("outbox", "Events waiting to sync", "{{ value_json.counters.outbox }}", "mdi:tray-full"),
)


def discovery(node: str, line: str, kind: str, title: str) -> list[tuple[str, bytes]]:
    """The retained discovery configs of one node."""
    topics = Topics(line)
    uid = f"fabrique_{line}_{node}".replace("-", "_")
    device = {"identifiers": [uid], "name": f"{title} ({node})", "manufacturer": "fabrique-edge",
              "model": f"{kind} station", "sw_version": __version__}
    availability = {"availability": [{"topic": topics.status(node), "value_template": "{{ value_json.state }}",
                                      "payload_available": "online", "payload_not_available": "offline"}]}
    out: list[tuple[str, bytes]] = []
    for object_id, name, template, icon in SENSORS:
        config = {"name": name, "unique_id": f"{uid}_{object_id}", "object_id": f"{uid}_{object_id}",
                  "state_topic": topics.state(node), "value_template": template, "icon": icon,
                  "device": device, **availability}
        if object_id in ("events", "scans", "errors", "outbox"):
            config["state_class"] = "total_increasing" if object_id != "outbox" else "measurement"
        out.append((ha_config_topic("sensor", node, object_id), json.dumps(config).encode()))
    online = {"name": "Online", "unique_id": f"{uid}_online", "object_id": f"{uid}_online",
              "state_topic": topics.status(node), "value_template": "{{ value_json.state }}",
              "payload_on": "online", "payload_off": "offline", "device_class": "connectivity",
              "device": device}
    out.append((ha_config_topic("binary_sensor", node, "online"), json.dumps(online).encode()))
    return out

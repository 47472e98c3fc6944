"""The topic scheme, `{root}/{site_id}/...`: a site's topics start with its id, so a broker ACL
(`pattern readwrite irrigation/%u/#`) confines a device credential to its own site.

Readings: `{root}/{site_id}/sensors/{sensor_id}/reading` carries one reading and
`{root}/{site_id}/readings` a batch (the body of `POST /v1/readings`). Devices (pump
controllers): `{root}/{site_id}/devices/{hardware_id}/cmd` to the device, `.../ack` and the
retained `.../state` from it (docs/device-protocol.md)."""

from dataclasses import dataclass

SENSORS = "sensors"
READING = "reading"
READINGS = "readings"
DEVICES = "devices"
CMD = "cmd"
ACK = "ack"
STATE = "state"
DEVICE_LEVELS = (CMD, ACK, STATE)


def site_topic(root: str, site_id: object, *levels: object) -> str:
    return "/".join([root, str(site_id), *map(str, levels)])


def sensor_reading(root: str, site_id: object, sensor_id: object) -> str:
    return site_topic(root, site_id, SENSORS, sensor_id, READING)


def readings(root: str, site_id: object) -> str:
    return site_topic(root, site_id, READINGS)


def device_topic(root: str, site_id: object, hardware_id: object, level: str) -> str:
    return site_topic(root, site_id, DEVICES, hardware_id, level)


def parse_device_topic(root: str, topic: str) -> tuple[str, str, str] | None:
    """`(site_id, hardware_id, level)` of a device topic under `root`, the ids still text."""
    levels = topic.split("/")
    if (
        len(levels) == 5
        and levels[0] == root
        and levels[2] == DEVICES
        and levels[4] in DEVICE_LEVELS
    ):
        return levels[1], levels[3], levels[4]
    return None


def reading_filters(root: str) -> list[str]:
    """What the readings bridge subscribes to: both reading topics of every site."""
    return [sensor_reading(root, "+", "+"), readings(root, "+")]


def shared(topic_filter: str, group: str) -> str:
    """An MQTT 5 shared subscription: each message goes to one member of `group`."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter


@dataclass(frozen=True)
class ReadingTopic:
    """A reading topic taken apart; the ids still text (the bridge judges them)."""

    site: str
    sensor: str | None
    """None for the batch topic."""


def parse_reading_topic(root: str, topic: str) -> ReadingTopic | None:
    """None when the topic is not one of the two reading topics under `root`."""
    levels = topic.split("/")
    if len(levels) == 3 and levels[0] == root and levels[2] == READINGS:
        return ReadingTopic(levels[1], None)
    if len(levels) == 5 and levels[0] == root and (levels[2], levels[4]) == (SENSORS, READING):
        return ReadingTopic(levels[1], levels[3])
    return None

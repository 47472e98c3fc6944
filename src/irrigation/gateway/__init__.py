"""The hardware gateway, the client of the pump controllers: the wire (`wire.py`: the device
address, command, acknowledgement, state and the `Gateway` protocol) and one driver per
transport, MQTT (`mqtt.py`) and our simulator's HTTP dialect (`http.py`). It knows no
domain: site ids come in as strings or UUIDs, and the worker makes one gateway and hands it
to the pump jobs in the worker context."""

from irrigation.gateway.http import HttpGateway
from irrigation.gateway.wire import (
    HARDWARE_ID_PATTERN,
    Ack,
    AckResult,
    Command,
    DeviceAddress,
    DeviceState,
    Gateway,
    GatewayError,
    GatewayFailure,
    InvalidAddress,
    Op,
    StatePredicate,
    is_addressable,
    max_call_s,
)
from irrigation.settings import Settings

__all__ = [
    "HARDWARE_ID_PATTERN",
    "Ack",
    "AckResult",
    "Command",
    "DeviceAddress",
    "DeviceState",
    "Gateway",
    "GatewayError",
    "GatewayFailure",
    "HttpGateway",
    "InvalidAddress",
    "Op",
    "StatePredicate",
    "create_gateway",
    "is_addressable",
    "max_call_s",
]


def create_gateway(settings: Settings) -> Gateway:
    """The driver `IRRIGATION_GATEWAY` names: MQTT at `IRRIGATION_MQTT_URL`, or HTTP at
    `IRRIGATION_GATEWAY_URL`."""
    if settings.gateway == "mqtt":
        # Imported here: aiomqtt and paho are the MQTT driver's alone.
        from irrigation.gateway.mqtt import MqttGateway, gateway_client_suffix
        from irrigation.mqtt.address import BrokerAddress
        from irrigation.mqtt.client import BrokerLink, SessionOptions, client_id

        options = SessionOptions(
            client_id(settings.mqtt_client_id_prefix, "gateway", gateway_client_suffix()),
            persistent=False,
        )
        link = BrokerLink(BrokerAddress.parse(settings.mqtt_url), options, settings.mqtt_protocol)
        return MqttGateway(
            link,
            settings.mqtt_topic_root,
            timeout_s=settings.gateway_timeout_s,
            retries=settings.gateway_retries,
        )
    return HttpGateway(
        settings.gateway_url,
        timeout_s=settings.gateway_timeout_s,
        retries=settings.gateway_retries,
    )

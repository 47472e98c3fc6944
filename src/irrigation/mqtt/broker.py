"""The embedded broker (amqtt, pure Python, MQTT 3.1.1 only) that `irrigation up` starts when
no broker answers: `python -m irrigation.mqtt.broker --port N` (the `embedded` extra).

What it does not give, measured against amqtt 0.12 (so the project's guarantees need
Mosquitto with the project's config, `deploy/mosquitto/`): no MQTT 5 (no shared
subscriptions, no session expiry), sessions only in memory (a broker restart loses them),
and a QoS 1 message that waits more than 5 s for its acknowledgement, or whose subscriber
disconnects before acknowledging it, is dropped rather than sent again. Enough for a local
stack; a subscriber killed mid-batch can lose that batch here."""

import argparse
import asyncio
import logging
import signal
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.authentication import BaseAuthPlugin
from amqtt.session import Session


class AcceptEveryone(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Lets every client in, and as itself: amqtt's anonymous plugin marks each session
    anonymous, and amqtt keeps no messages for an anonymous session while it is away."""

    async def authenticate(self, *, session: Session) -> bool | None:
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {f"{__name__}.{AcceptEveryone.__name__}": {}},
    }


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    """Run the broker until `stop` is set."""
    broker = Broker(broker_config(host, port))
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    # amqtt reports every connection at INFO; a local stack's terminal needs its problems.
    logging.basicConfig(level=logging.WARNING, format="mqtt broker: %(levelname)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(args.host, args.port, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()

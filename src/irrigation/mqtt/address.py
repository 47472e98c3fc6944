"""The broker's address, from `IRRIGATION_MQTT_URL`: `mqtt://[user:password@]host[:port]`,
or `mqtts://` for TLS (default port 8883)."""

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> "BrokerAddress":
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"not an MQTT URL (mqtt:// or mqtts://): {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or DEFAULT_PORTS[parts.scheme],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=parts.scheme == "mqtts",
        )

    @property
    def is_local(self) -> bool:
        return self.host in LOOPBACK

    def url(self) -> str:
        """For logs and `stack.json`: the password left out."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}"

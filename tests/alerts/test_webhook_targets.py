"""Webhooks are no window on the service's own network: a URL whose host is, or resolves to,
a loopback, private, link-local, multicast or reserved address is refused at creation (422
`webhook_url_forbidden`) and again at every delivery, unless the allow-list covers it; the
request goes to the address that was checked; redirects are not followed; and the delivery
log shows a status code and a fixed error class, never what the other side said.

No outside network here: a public address is only ever created, never delivered to."""

import asyncio
import ipaddress
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.alerts import targets
from irrigation.alerts.models import WebhookDelivery
from irrigation.alerts.webhooks import deliver_webhooks
from irrigation.settings import Settings
from tests.alerts.conftest import LOOPBACK, Receiver
from tests.support.api import Headers, app_client
from tests.support.problems import assert_invalid

Sessions = async_sessionmaker[AsyncSession]

FORBIDDEN = [
    "http://127.0.0.1/",
    "http://10.1.2.3/",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]/",
    "http://[fd00::1]/",
    "http://localhost:8080/hook",  # a name that resolves to loopback
    "http://2130706433/",  # 127.0.0.1 spelled as one number, as resolvers read it
    "http://0.0.0.0:22/",
    "http://172.16.5.4/",
    "https://192.168.1.1/admin",
    "http://100.64.0.1/",  # shared address space (carrier-grade NAT)
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[fe80::1]/",
    "http://[::ffff:10.0.0.1]/",  # IPv4-mapped IPv6
    "http://[2002:7f00:1::1]/",  # 6to4 around 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 around 10.0.0.1
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """As deployed by default: no allow-list."""
    return settings.model_copy(update={"webhook_allow_networks": []})


async def subscribe(client: httpx.AsyncClient, headers: Headers, url: str) -> dict[str, Any]:
    response = await client.post("/v1/webhooks", json={"url": url}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def last_attempt(
    client: httpx.AsyncClient, headers: Headers, webhook_id: str
) -> dict[str, Any]:
    response = await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    (logged,) = response.json()["items"]
    assert isinstance(logged, dict)
    return logged


async def ping(client: httpx.AsyncClient, headers: Headers, webhook_id: str) -> None:
    response = await client.post(f"/v1/webhooks/{webhook_id}/test", headers=headers)
    assert response.status_code == 202, response.text


# At creation ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", FORBIDDEN)
async def test_a_non_public_target_is_refused_at_creation(
    client: httpx.AsyncClient, admin: Headers, url: str
) -> None:
    response = await client.post("/v1/webhooks", json={"url": url}, headers=admin)

    body = assert_invalid(response, "body.url", code="webhook_url_forbidden")
    if "localhost" in url:  # which address the name resolved to is not told
        assert "127.0.0.1" not in body["detail"]
    assert (await client.get("/v1/webhooks", headers=admin)).json()["items"] == []


async def test_a_public_address_is_accepted(client: httpx.AsyncClient, admin: Headers) -> None:
    for url in ("http://93.184.216.34/hook", "https://[2606:2800:220:1:248:1893:25c8:1946]/h"):
        assert (await subscribe(client, admin, url))["url"] == url


async def test_a_changed_url_is_checked_like_a_new_one(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    hook = await subscribe(client, admin, "http://93.184.216.34/hook")
    path = f"/v1/webhooks/{hook['id']}"

    response = await client.patch(
        path, json={"version": 1, "url": "http://169.254.169.254/"}, headers=admin
    )

    assert_invalid(response, "body.url", code="webhook_url_forbidden")
    assert (await client.get(path, headers=admin)).json()["url"] == "http://93.184.216.34/hook"


async def test_the_allow_list_lets_its_networks_through_and_no_others(
    settings: Settings, admin: Headers
) -> None:
    networks = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"), LOOPBACK]
    async with app_client(settings, webhook_allow_networks=networks) as client:
        for url in ("http://10.1.2.3/", "http://[fd00::1]/", "http://localhost:8080/hook"):
            await subscribe(client, admin, url)
        for url in ("http://192.168.1.1/", "http://169.254.169.254/", "http://[::1]/"):
            response = await client.post("/v1/webhooks", json={"url": url}, headers=admin)
            assert_invalid(response, "body.url", code="webhook_url_forbidden")


async def test_the_allow_list_setting_reads_comma_separated_cidrs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IRRIGATION_WEBHOOK_ALLOW_NETWORKS", "10.20.0.0/16, fd12::/48")
    assert Settings().webhook_allow_networks == [
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd12::/48"),
    ]
    monkeypatch.delenv("IRRIGATION_WEBHOOK_ALLOW_NETWORKS")
    assert Settings(_env_file=None).webhook_allow_networks == []


# At delivery ---------------------------------------------------------------------------


async def test_delivery_checks_again_and_sends_nothing_to_a_forbidden_address(
    settings: Settings, admin: Headers, ctx: dict[str, Any], receiver: Receiver
) -> None:
    """Created while the allow-list let loopback through; delivered after it no longer does
    (as a name that resolved to a public address at creation and to a private one later)."""
    async with app_client(settings, webhook_allow_networks=[LOOPBACK]) as client:
        hook = await subscribe(client, admin, f"{receiver.url}/ok")
        await ping(client, admin, hook["id"])

        assert await deliver_webhooks(ctx) == 1  # ctx: the settings without an allow-list

        assert receiver.requests == []
        logged = await last_attempt(client, admin, hook["id"])
        assert (logged["status"], logged["last_status_code"]) == ("pending", None)
        assert logged["last_error"] == "forbidden_address"


async def test_the_request_goes_to_the_checked_address_with_the_name_as_host(
    settings: Settings,
    admin: Headers,
    ctx: dict[str, Any],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name no DNS knows, which only the service's own resolution maps to the receiver:
    delivered, so the connection went to the address the check returned (httpx did not look
    the name up again), and the receiver saw the name in `Host`."""
    port = httpx.URL(receiver.url).port

    async def resolve(host: str, port: int, timeout_s: float) -> list[targets.IPAddress]:
        assert host == "receiver.example"
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(targets, "resolve", resolve)
    allowed = {"webhook_allow_networks": [LOOPBACK]}
    ctx["irrigation"].settings = ctx["irrigation"].settings.model_copy(update=allowed)
    async with app_client(settings, **allowed) as client:
        hook = await subscribe(client, admin, f"http://receiver.example:{port}/ok")
        await ping(client, admin, hook["id"])

        assert await deliver_webhooks(ctx) == 1

        (request,) = receiver.at("/ok")
        assert request.headers["host"] == f"receiver.example:{port}"
        assert (await last_attempt(client, admin, hook["id"]))["status"] == "delivered"


async def test_redirects_are_not_followed(
    settings: Settings, admin: Headers, ctx: dict[str, Any], receiver: Receiver
) -> None:
    allowed = {"webhook_allow_networks": [LOOPBACK]}
    ctx["irrigation"].settings = ctx["irrigation"].settings.model_copy(update=allowed)
    async with app_client(settings, **allowed) as client:
        hook = await subscribe(client, admin, f"{receiver.url}/redirect")
        await ping(client, admin, hook["id"])

        assert await deliver_webhooks(ctx) == 1

        assert receiver.at("/ok-redirected") == []
        logged = await last_attempt(client, admin, hook["id"])
        assert (logged["last_status_code"], logged["last_error"]) == (307, "http_error")


@dataclass
class Banner:
    """A TCP service that is not HTTP: answers with its banner and hangs up (what a port
    scan through webhooks would be after)."""

    port: int = 0
    text: bytes = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3 internal-db-07\r\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(self.text)
        await writer.drain()
        writer.close()


async def test_the_log_shows_a_class_never_the_other_sides_text(
    settings: Settings,
    admin: Headers,
    ctx: dict[str, Any],
    receiver: Receiver,
    sessions: Sessions,
) -> None:
    banner = Banner()
    server = await asyncio.start_server(banner.handle, "127.0.0.1", 0)
    banner.port = server.sockets[0].getsockname()[1]
    allowed = {"webhook_allow_networks": [LOOPBACK]}
    ctx["irrigation"].settings = ctx["irrigation"].settings.model_copy(update=allowed)
    try:
        async with app_client(settings, **allowed) as client:
            not_http = await subscribe(client, admin, f"http://127.0.0.1:{banner.port}/")
            failing = await subscribe(client, admin, f"{receiver.url}/fail")
            for hook in (not_http, failing):
                await ping(client, admin, hook["id"])

            assert await deliver_webhooks(ctx) == 2

            logged = await last_attempt(client, admin, not_http["id"])
            assert (logged["last_status_code"], logged["last_error"]) == (None, "protocol_error")
            logged = await last_attempt(client, admin, failing["id"])
            assert (logged["last_status_code"], logged["last_error"]) == (500, "http_error")
            # Text stored before the log kept classes is shown as a class too.
            async with sessions() as session, session.begin():
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.subscription_id == failing["id"])
                    .values(last_error="ConnectError: [Errno 111] Connect call failed (10.0.0.5)")
                )
            logged = await last_attempt(client, admin, failing["id"])
            assert logged["last_error"] == "connect_error"
            for hook in (not_http, failing):
                shown = await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=admin)
                assert "SSH" not in shown.text
                assert "internal" not in shown.text
                assert "10.0.0.5" not in shown.text
    finally:
        server.close()
        await server.wait_closed()


# TLS: the name is verified although the address is connected to ---------------------


@dataclass
class TlsReceiver:
    """HTTPS on 127.0.0.1 with a certificate for `localhost` only; records the SNI name and
    the Host header of each request."""

    context: ssl.SSLContext
    port: int = 0
    seen: list[tuple[str | None, str]] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context.sni_callback = self._sni

    def _sni(self, _: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        self.names.append(name)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            await reader.readexactly(int(headers.get("Content-Length", "0")))
            self.seen.append((self.names[-1] if self.names else None, headers.get("Host", "")))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_is_verified_for_the_name_while_the_checked_address_is_connected_to(
    settings: Settings,
    admin: Headers,
    ctx: dict[str, Any],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls = TlsReceiver(context)
    server = await asyncio.start_server(tls.handle, "127.0.0.1", 0, ssl=context)
    tls.port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted by the webhook client only
    allowed = {"webhook_allow_networks": [LOOPBACK]}
    ctx["irrigation"].settings = ctx["irrigation"].settings.model_copy(update=allowed)
    try:
        async with app_client(settings, **allowed) as client:
            by_name = await subscribe(client, admin, f"https://localhost:{tls.port}/hook")
            by_address = await subscribe(client, admin, f"https://127.0.0.1:{tls.port}/hook")
            for hook in (by_name, by_address):
                await ping(client, admin, hook["id"])

            assert await deliver_webhooks(ctx) == 2

            assert (await last_attempt(client, admin, by_name["id"]))["status"] == "delivered"
            assert tls.seen == [("localhost", f"localhost:{tls.port}")]
            # The certificate names localhost only: for the bare address it is refused.
            logged = await last_attempt(client, admin, by_address["id"])
            assert (logged["last_status_code"], logged["last_error"]) == (None, "tls_error")
    finally:
        server.close()
        await server.wait_closed()

"""Where a webhook may go: the URL's host is resolved and refused when any of its addresses
is not a public one (loopback, private, link-local, multicast, reserved, unspecified,
shared address space, or one of those wrapped in IPv6), unless
`IRRIGATION_WEBHOOK_ALLOW_NETWORKS` covers it (on-premises receivers). Checked when a
subscription is created or changed, and again at every delivery, which then connects to
the address it checked (a name may resolve elsewhere by then: DNS rebinding)."""

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 6052's well-known NAT64 prefix: the last 32 bits are an IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class ForbiddenTarget(Exception):
    """The host is, or resolves to, an address webhooks may not reach."""

    def __init__(self, host: str, address: IPAddress) -> None:
        self.host, self.address = host, address
        super().__init__(f"{host} is or resolves to a non-public address ({address})")


class Unresolvable(Exception):
    """The host did not resolve (no such name, or DNS did not answer in time)."""


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is its IPv4 address: the socket
    reaches exactly that."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # 6to4 and NAT64 carry an IPv4 address that a gateway may forward to.
        embedded = address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not _public(embedded):
            return False
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def allowed(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    address = _plain(address)
    return any(address in network for network in networks) or _public(address)


def literal(host: str) -> IPAddress | None:
    try:
        return _plain(ipaddress.ip_address(host))
    except ValueError:
        return None


async def resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    """Every address of `host`, in the resolver's order of preference, without repeats."""
    found = literal(host)
    if found is not None:
        return [found]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:  # socket.gaierror is an OSError
        raise Unresolvable(host) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # An IPv6 sockaddr may carry a scope ("fe80::1%eth0"); the address is before it.
        address = _plain(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Unresolvable(host)
    return addresses


async def checked_addresses(
    url: str, networks: Sequence[IPNetwork], timeout_s: float
) -> list[IPAddress]:
    """The addresses a delivery to `url` may connect to: all of the host's, or none (any
    refused address refuses the host, so no resolver order can slip one through). Parsed
    with urllib, not httpx: the API checks URLs too, and loads no HTTP client."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    addresses = await resolve(host, parts.port or _default_port(parts.scheme), timeout_s)
    for address in addresses:
        if not allowed(address, networks):
            raise ForbiddenTarget(host, address)
    return addresses


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80

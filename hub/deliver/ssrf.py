"""SSRF guard: a target may only reach public addresses, checked on the address actually connected to.

The host is resolved at every attempt and the request goes to the checked address (Host header and TLS SNI
keep the name), so a DNS answer that changes between check and connect cannot point us inward.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BLOCKED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "64:ff9b::/96", "2001:db8::/32",
    "2002::/16",  # 6to4: embeds any IPv4 address, private ones included
    "fec0::/10",  # deprecated site-local
)]


class Refused(Exception):
    """The target URL or address is not allowed."""


def networks(cidrs: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def check_address(ip: IPAddress, allowed: list) -> None:
    """Raise :class:`Refused` for a non-public address that no allowed network contains."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == n.version and ip in n for n in allowed):
        return
    if (any(ip.version == n.version and ip in n for n in _BLOCKED) or ip.is_private or ip.is_loopback
            or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified):
        raise Refused("address not allowed (not a public address)")


def check_url(url: str, https_only: bool) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an acceptable URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused(f"scheme {parts.scheme!r} not allowed (http/https only)")
    if https_only and parts.scheme != "https":
        raise Refused("plain http not allowed (https_only)")
    if not parts.hostname:
        raise Refused("URL has no host")
    if parts.username or parts.password:
        raise Refused("credentials in the URL are not allowed; use basic_auth")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


async def resolve(url: str, allowed: list, https_only: bool) -> tuple[str, IPAddress]:
    """Check the URL, resolve its host and check every address; returns ``(host, first address)``."""
    _, host, port = check_url(url, https_only)
    try:
        ips = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Refused(f"cannot resolve {host}: {exc}") from None
        ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    for ip in ips:
        try:
            check_address(ip, allowed)
        except Refused:
            # Never say which address a name resolved to: that would map the inside for whoever asks.
            raise Refused(f"{host}: address not allowed (not a public address)") from None
    return host, ips[0]


def pinned_url(url: str, ip: IPAddress) -> str:
    """``url`` with its host replaced by the checked address."""
    parts = urlsplit(url)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()

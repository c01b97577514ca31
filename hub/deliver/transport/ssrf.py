"""SSRF guard: a target may only reach public addresses, checked on the address actually connected to.

The host is resolved (answers kept ``RESOLVE_TTL`` seconds) and every address checked; the request goes to the
checked address (Host header and TLS SNI keep the name), so a DNS answer that changes between check and connect
cannot point us inward. :func:`parse` is the one URL parser of delivery: the guard checks the host that the
client will then connect to and name, with no second parser to disagree with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote, urlsplit

log = logging.getLogger("rthub.ssrf")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BLOCKED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "64:ff9b::/96", "2001:db8::/32",
    "2002::/16",  # 6to4: embeds any IPv4 address, private ones included
    "fec0::/10",  # deprecated site-local
)]
RESOLVE_TTL = 5.0  # seconds a checked DNS answer is reused: getaddrinfo per POST cost as much as the POST itself
_DEFAULT_PORT = {"http": 80, "https": 443}
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]*))*", re.I)  # 127.1, 0x7f.1, 2130706433
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


class Refused(Exception):
    """The target URL or address is not allowed."""


class URL(NamedTuple):
    scheme: str  # http or https
    host: str  # lower-case ASCII (IDNA) name, or an IP address without brackets
    port: int
    target: str  # path and query, percent-encoded: the request line's target
    netloc: str  # the Host header: host (bracketed if IPv6) and the port when not the scheme's default
    ip: IPAddress | None  # the host when it is an address literal


@lru_cache(maxsize=256)
def parse(url: str) -> URL:
    """The parts of an http(s) URL delivery may use; :class:`Refused` for anything else."""
    if "\\" in url or url != url.strip() or any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise Refused("URL contains a backslash or a control character")  # parsers disagree on those
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an IPv4 address or garbage in brackets
        raise Refused(f"invalid URL: {exc}") from None
    if " " in parts.netloc:
        raise Refused("URL has a space in its host")
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT:
        raise Refused(f"scheme {parts.scheme!r} not allowed (http/https only)")
    if "@" in parts.netloc:
        raise Refused("credentials in the URL are not allowed; use basic_auth")
    try:
        port = parts.port or _DEFAULT_PORT[scheme]
    except ValueError:
        raise Refused("URL has an invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise Refused("URL has no host")
    ip: IPAddress | None = None
    if parts.netloc.startswith("["):
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise Refused("URL has an invalid IPv6 address") from None
        name = f"[{ip}]"
    else:
        try:
            host = host.encode("idna").decode("ascii").lower()  # the codec rejects empty labels and the like
        except UnicodeError:
            raise Refused("URL has an invalid host name") from None
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            if _NUMERIC_HOST.fullmatch(host):
                raise Refused("URL host is a non-canonical IPv4 address") from None
        name = host
    host = str(ip) if ip is not None else host
    target = quote(parts.path, safe=_PATH_SAFE) or "/"
    if parts.query:
        target += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
    netloc = name if port == _DEFAULT_PORT[scheme] else f"{name}:{port}"
    return URL(scheme, host, port, target, netloc, ip)


def networks(cidrs: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def check_address(ip: IPAddress, allowed: list) -> None:
    """Raise :class:`Refused` for a non-public address that no allowed network contains."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not _public(ip) and not any(ip.version == n.version and ip in n for n in allowed):
        raise Refused("address not allowed (not a public address)")


@lru_cache(maxsize=1024)
def _public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a public address (cached: the same few addresses are checked at every attempt)."""
    return not (any(ip.version == n.version and ip in n for n in _BLOCKED) or ip.is_private or ip.is_loopback
                or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def check(url: str, https_only: bool) -> URL:
    """The parsed URL, if delivery may use it (before any address is known)."""
    u = parse(url)
    if https_only and u.scheme != "https":
        raise Refused("plain http not allowed (https_only)")
    return u


def check_url(url: str, https_only: bool) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an acceptable URL."""
    u = check(url, https_only)
    return u.scheme, u.host, u.port


_answers: dict[tuple[str, int], tuple[float, list[IPAddress]]] = {}


def host_refusal(host: str) -> str:
    """The one refusal for a host name, whether it does not resolve or resolves to a non-public address."""
    return f"{host}: address not allowed (not a public address)"


async def addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to (kept ``RESOLVE_TTL`` seconds)."""
    now = time.monotonic()
    cached = _answers.get((host, port))
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        # The same words as a name that resolves to an inside address (resolve() below): a different message
        # would tell whoever submits URLs which internal names exist. The operator's log has the cause.
        log.info("refused %s: cannot resolve it (%s)", host, exc)
        raise Refused(host_refusal(host)) from None
    ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if len(_answers) >= 1024:
        _answers.clear()
    _answers[(host, port)] = (now + RESOLVE_TTL, ips)
    return ips


async def resolve(url: str, allowed: list, https_only: bool) -> tuple[str, IPAddress]:
    """Check the URL, resolve its host and check every address; returns ``(host, first address)``."""
    u = check(url, https_only)
    ips = [u.ip] if u.ip is not None else await addresses(u.host, u.port)
    for ip in ips:
        try:
            check_address(ip, allowed)
        except Refused:
            # Never say which address a name resolved to: that would map the inside for whoever asks.
            raise Refused(host_refusal(u.host)) from None
    return u.host, ips[0]


def pinned_url(url: str, ip: IPAddress) -> str:
    """``url`` with its host replaced by the checked address."""
    u = parse(url)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{u.scheme}://{host}{'' if u.port == _DEFAULT_PORT[u.scheme] else f':{u.port}'}{u.target}"

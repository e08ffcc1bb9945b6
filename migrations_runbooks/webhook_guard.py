"""SSRF guard for webhook URLs: only public addresses, checked at registration and at every delivery.

A webhook URL is attacker-controlled input that makes the control plane send requests from inside
the network. So (issue 17):

* the scheme is http or https, with a host;
* cloud metadata host names (``metadata.google.internal``, ``instance-data`` …) are refused by name;
* the host is resolved, in every form ``getaddrinfo`` accepts: dotted IPv4, IPv6 (``[::1]``),
  IPv4-mapped IPv6 (``[::ffff:127.0.0.1]``), and the legacy ``inet_aton`` forms: decimal
  (``2130706433``), octal (``0177.0.0.1``), hex (``0x7f.1``) and short (``127.1``); and **every**
  address it resolves to must be globally routable: loopback, private (10/8, 172.16/12, 192.168/16,
  fc00::/7), link-local (169.254/16 — the metadata service — and fe80::/10), shared/CGNAT
  (100.64/10), multicast, reserved, unspecified, documentation and benchmark ranges are refused, and
  so is an IPv6 address that embeds a refused IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64);
* ``settings.WEBHOOK_ALLOWED_HOSTS`` (host names, IPs or CIDR networks) lets an operator name an
  internal receiver explicitly.

At delivery the connection itself is checked: the socket's peer address must pass the same test
before a byte is sent, so a name that re-resolves to an internal address after registration (DNS
rebinding) is refused too. Redirects are never followed, proxies from the environment are ignored,
and timeouts are short.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.packet.net",
        "metadata.platformequinix.com",
        "metadata.tencentyun.com",
        "100-100-100-200.metadata",
    }
)
# (connect, read) seconds: a receiver answers an event at once or is retried later.
TIMEOUT_S = (2.0, 5.0)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(ValueError):
    """The URL's host is, or resolves to, an address a webhook may not reach."""


def _allowlist() -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    names: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in getattr(settings, "WEBHOOK_ALLOWED_HOSTS", ()) or ():
        entry = str(entry).strip().lower()
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return names, networks


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 (RFC 6052)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in ipaddress.ip_network("::/96"):  # IPv4-compatible (deprecated), e.g. ::127.0.0.1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be reached by a webhook, or None if it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and int(inner) != 0:
            problem = address_problem(inner)
            if problem:
                return f"embeds {inner}, which {problem}"
            return None
    for flag, text in (
        ("is_loopback", "is loopback"),
        ("is_link_local", "is link-local (cloud metadata lives here)"),
        ("is_multicast", "is multicast"),
        ("is_unspecified", "is unspecified"),
        ("is_reserved", "is reserved"),
        ("is_private", "is private"),
    ):
        if getattr(ip, flag):
            return text
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "is shared address space (RFC 6598)"
    if not ip.is_global:
        return "is not globally routable"
    return None


def _allowed(host: str, ip: IPAddress | None = None) -> bool:
    names, networks = _allowlist()
    if host.lower().rstrip(".") in names:
        return True
    return ip is not None and any(ip.version == n.version and ip in n for n in networks)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise AddressRefused(f"host {host!r} does not resolve ({exc})") from None
    out: list[IPAddress] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        out.append(ipaddress.ip_address(address))
    if not out:
        raise AddressRefused(f"host {host!r} does not resolve")
    return out


def check_url(url: str) -> list[IPAddress]:
    """Refuse (``AddressRefused``) a URL a webhook may not be sent to; returns the resolved addresses."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise AddressRefused(f"not a valid URL ({exc})") from None
    if parts.scheme not in {"http", "https"}:
        raise AddressRefused("the scheme must be http or https")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise AddressRefused("the URL has no host")
    if host in METADATA_HOSTNAMES and not _allowed(host):
        raise AddressRefused(f"host {host!r} is a cloud metadata service")
    addresses = _resolve(host, port)
    for ip in addresses:
        problem = address_problem(ip)
        if problem and not _allowed(host, ip):
            raise AddressRefused(
                f"host {host!r} resolves to {ip}, which {problem}; add it to WEBHOOK_ALLOWED_HOSTS "
                "to allow an internal receiver"
            )
    return addresses


def _check_peer(conn: HTTPConnection, sock: socket.socket) -> None:
    peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
    problem = address_problem(peer)
    if problem and not _allowed(str(conn.host), peer):
        sock.close()
        raise AddressRefused(f"connected to {peer}, which {problem}")


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(self, sock)
        return sock


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(self, sock)
        return sock


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def guarded_session() -> requests.Session:
    """A session whose every connection is checked (see the module docstring); no env proxies."""
    session = requests.Session()
    session.trust_env = False  # an HTTP(S)_PROXY from the environment would hide the real peer
    adapter = _GuardedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def post(url: str, *, data: bytes, headers: dict[str, str]) -> requests.Response:
    """POST once: URL re-checked (resolved now), connection peer checked, no redirects followed,
    short timeouts. The body is not read (``stream=True``; the caller keeps only the status)."""
    check_url(url)
    with guarded_session() as session:
        response = session.post(
            url, data=data, headers=headers, timeout=TIMEOUT_S, allow_redirects=False, stream=True
        )
        response.close()
        return response

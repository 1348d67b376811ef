"""Where a webhook may connect: public addresses only, unless the destination allows private
networks (`allow_private_network: true`).

A URL's host is resolved and every address checked: loopback, private (RFC 1918, unique
local), link-local (cloud metadata servers live there), carrier-grade NAT, multicast,
reserved and unspecified addresses are refused. The connection then goes to the address that
was checked, not to a second lookup, so a name that resolves differently a moment later (DNS
rebinding) cannot slip through. Redirects are checked the same way before they are followed.
"""
import ipaddress
import socket
from typing import NamedTuple
from urllib.parse import urlsplit


class NetworkRefused(ValueError):
    """The destination resolves to an address it may not reach; the message says which."""


class Target(NamedTuple):
    scheme: str   # http or https
    host: str     # as written in the URL (TLS server name, Host header)
    port: int
    path: str     # path and query
    address: str  # the checked IP address to connect to


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved \
            or ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT):
        return False
    return ip.is_global


def split_url(url: str) -> tuple:
    """(scheme, host, port, path) of an http(s) URL; ValueError when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL are not allowed; use headers with a secret")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def resolve(url: str, allow_private: bool, getaddrinfo=socket.getaddrinfo) -> Target:
    """The URL's target with a checked address; NetworkRefused or ValueError otherwise."""
    scheme, host, port, path = split_url(url)
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NetworkRefused(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise NetworkRefused(f"{host} resolves to {refused[0]}, a private, loopback or link-local address; "
                                 "set allow_private_network: true on the destination to allow it")
    return Target(scheme, host, port, path, addresses[0])

"""Where a webhook may connect: public addresses only, unless the destination allows private
networks (`allow_private_network: true`).

A URL's host is resolved and every address checked: loopback, private (RFC 1918, unique
local), link-local (cloud metadata servers live there), carrier-grade NAT, multicast,
reserved and unspecified addresses are refused. An IPv6 address that stands for an IPv4 one
is checked by the IPv4 address it embeds: IPv4-mapped (`::ffff:a.b.c.d`), 6to4 (`2002::/16`,
the IPv4 address in bits 16-48: `2002:7f00:1::1` is 127.0.0.1 to a host with a 6to4 route) and
NAT64's well-known prefix (`64:ff9b::/96`). Forms that lead somewhere this check cannot see
are refused: Teredo (`2001::/32`, a tunnel through a relay to an obfuscated client address),
local-use NAT64 (`64:ff9b:1::/48`, translated however the local network chooses) and the
deprecated IPv4-compatible `::a.b.c.d`. The connection then goes to the address that was
checked, not to a second lookup, so a name that resolves differently a moment later (DNS
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
_NAT64 = ipaddress.ip_network("64:ff9b::/96")         # RFC 6052: the IPv4 address in the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use, any layout
_TEREDO = ipaddress.ip_network("2001::/32")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")       # RFC 4291, deprecated; :: and ::1 are in it too


def _embedded(ip: ipaddress.IPv6Address):
    """(form, the IPv4 address it stands for), (description, None) for a form refused
    outright, or None for an IPv6 address that is only itself. IPv4-mapped is tested before
    ::/96, which holds it."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64_LOCAL:
        return "a local-use NAT64 address", None
    if ip in _TEREDO:
        return "a Teredo address", None
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are judged as themselves
        return "an IPv4-compatible address", None
    return None


def _is_public_itself(ip) -> bool:
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved \
            or ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT):
        return False
    return ip.is_global


_NOT_PUBLIC = "a private, loopback or link-local address"


def refusal(address: str):
    """None when `address` may be dialed without allow_private_network; else the address and
    why not, to follow "<host> resolves to"."""
    ip = ipaddress.ip_address(address)
    embedded = _embedded(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if embedded is None:
        return None if _is_public_itself(ip) else f"{address}, {_NOT_PUBLIC}"
    form, ipv4 = embedded
    if ipv4 is None:
        return f"{address}, {form}, which leads where the guard cannot check"
    return None if _is_public_itself(ipv4) else f"{address} ({form} for {ipv4}), {_NOT_PUBLIC}"


def is_public(address: str) -> bool:
    return refusal(address) is None


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
        refused = [why for why in map(refusal, addresses) if why]
        if refused:
            raise NetworkRefused(f"{host} resolves to {refused[0]}; "
                                 "set allow_private_network: true on the destination to allow it")
    return Target(scheme, host, port, path, addresses[0])

"""Control-plane addresses: one ``HOST:PORT``, or several for several replicas.

Clients (the CLI, agents, engines) take ``--server`` as one address, as several separated by
commas (``cp-0:7700,cp-1:7700,cp-2:7700``), or as a gRPC target such as
``dns:///flowyard.flowyard.svc:7700`` (a DNS name with one record per replica). Several
addresses become one gRPC channel over all of them: gRPC's ``pick_first`` policy connects to
the first that answers and, when that replica goes away, the channel moves on to the next
one that does; the caller's own reconnection (a stream that resumes with its seq/ack
protocol) does the rest. No address is dropped for good: a replica that comes back is used
again.
"""

from __future__ import annotations

import ipaddress
import socket

#: Target schemes gRPC resolves itself; such an address is passed through unchanged.
GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


class AddressError(ValueError):
    """An address list that cannot be used; the message says which part and why."""


def split(addresses: str) -> list[str]:
    """The addresses of a comma-separated list, stripped, empty parts dropped."""
    return [part.strip() for part in addresses.split(",") if part.strip()]


def host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for an IPv6 literal) as its two parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{address!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def check(addresses: str) -> None:
    """Raise ``AddressError`` unless ``addresses`` is a gRPC target or ``HOST:PORT`` list
    (host names are not resolved here)."""
    if addresses.strip().startswith(GRPC_SCHEMES):
        return
    parts = split(addresses)
    if not parts:
        raise AddressError("no address given")
    for part in parts:
        host_port(part)


def grpc_target(addresses: str) -> tuple[str, list[tuple[str, str]]]:
    """The gRPC target for ``addresses``, and the channel options it needs.

    One address (or a gRPC target with a scheme) is used as it is. Several become an
    ``ipv4:``/``ipv6:`` target over their IP addresses, host names resolved now; TLS then
    checks the certificate against the first host name (``grpc.ssl_target_name_override``)
    and calls carry it as their authority, as they would with that address alone.

    Raises:
        AddressError: a part is not ``HOST:PORT``, or a host name does not resolve.
    """
    if addresses.strip().startswith(GRPC_SCHEMES):
        return addresses.strip(), []
    parts = split(addresses)
    if not parts:
        raise AddressError("no address given")
    if len(parts) == 1:
        return parts[0], []
    resolved: list[tuple[int, str]] = []
    first_name = ""
    for part in parts:
        host, port = host_port(part)
        try:
            ip = ipaddress.ip_address(host)
            resolved.append((ip.version, _joined(str(ip), port, ip.version)))
            continue
        except ValueError:
            first_name = first_name or f"{host}:{port}"
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise AddressError(f"{part!r}: host {host!r} does not resolve ({error})") from None
        for family, _, _, _, sockaddr in infos:
            version = 6 if family == socket.AF_INET6 else 4
            entry = (version, _joined(str(sockaddr[0]), port, version))
            if entry not in resolved:
                resolved.append(entry)
    # One target holds one family: IPv4 where there is any, as gRPC's own resolver prefers.
    version = 4 if any(v == 4 for v, _ in resolved) else 6
    target = f"ipv{version}:" + ",".join(a for v, a in resolved if v == version)
    options: list[tuple[str, str]] = []
    if first_name:
        options = [
            ("grpc.default_authority", first_name),
            ("grpc.ssl_target_name_override", first_name.rpartition(":")[0]),
        ]
    return target, options


def _joined(host: str, port: int, version: int) -> str:
    return f"[{host}]:{port}" if version == 6 else f"{host}:{port}"

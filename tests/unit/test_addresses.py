"""Control-plane addresses: one, several, or a gRPC target."""

from __future__ import annotations

import re

import pytest

from flowyard_common.addresses import AddressError, check, grpc_target


def test_one_address_is_used_as_it_is() -> None:
    assert grpc_target("cp.example.com:7700") == ("cp.example.com:7700", [])
    assert grpc_target(" 127.0.0.1:7700 ") == ("127.0.0.1:7700", [])


def test_a_grpc_target_is_passed_through() -> None:
    target = "dns:///flowyard.flowyard.svc.cluster.local:7700"
    assert grpc_target(target) == (target, [])
    assert grpc_target("ipv4:10.0.0.1:7700,10.0.0.2:7700")[0] == "ipv4:10.0.0.1:7700,10.0.0.2:7700"


def test_several_ip_addresses_become_one_target() -> None:
    assert grpc_target("127.0.0.1:1, 127.0.0.2:2,") == ("ipv4:127.0.0.1:1,127.0.0.2:2", [])
    assert grpc_target("[::1]:1,[::1]:2") == ("ipv6:[::1]:1,[::1]:2", [])


def test_host_names_are_resolved_and_the_first_one_stays_the_authority() -> None:
    target, options = grpc_target("localhost:7700,127.0.0.2:7701")
    assert target.startswith("ipv4:127.0.0.1:7700")
    assert target.endswith("127.0.0.2:7701")
    assert dict(options) == {
        "grpc.default_authority": "localhost:7700",
        "grpc.ssl_target_name_override": "localhost",
    }


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ("", "no address given"),
        (" , ", "no address given"),
        ("cp:7700,cp", "'cp' is not HOST:PORT"),
        ("cp:0", "'cp:0' is not HOST:PORT"),
        ("cp:http", "'cp:http' is not HOST:PORT"),
    ],
)
def test_a_list_that_cannot_be_used_says_which_part(addresses: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        check(addresses)


def test_a_host_that_does_not_resolve_is_named() -> None:
    with pytest.raises(
        AddressError, match=re.escape("host 'no-such-host.invalid' does not resolve")
    ):
        grpc_target("127.0.0.1:1,no-such-host.invalid:2")

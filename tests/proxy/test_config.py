"""Sidecar config checks that must fail at load, before the one-time join token is spent,
with messages that say what is expected and name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from auditmesh.proxy.config import ConfigError, load_config, split_host_port

PAYMENTS = "spiffe://cluster.local/ns/shop/sa/payments"


def write(tmp_path: Path, **changes: Any) -> Path:
    config: dict[str, Any] = {
        "workload": {"name": "orders", "namespace": "shop"},
        "server": {"url": "https://127.0.0.1:7443", "bundle": "ca.pem", "join_token": "t"},
        "data_dir": "./data",
        "inbound": {"listen": "127.0.0.1:15006", "app": "127.0.0.1:8080"},
        "outbound": [
            {
                "service": "payments",
                "listen": "127.0.0.1:15101",
                "upstream": "127.0.0.1:16006",
                "identity": PAYMENTS,
            }
        ],
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if not field:
            config[section] = value
        elif section == "outbound":
            config["outbound"][0][field] = value
        else:
            config[section][field] = value
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value).removeprefix(f"{path}: ")


def test_the_example_loads(tmp_path: Path) -> None:
    config, base = load_config(write(tmp_path))
    assert base == tmp_path.resolve() and config.outbound[0].identity == PAYMENTS


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1", "expected HOST:PORT such as 127.0.0.1:15001, got '127.0.0.1'"),
        ("127.0.0.1:http", "expected HOST:PORT such as 127.0.0.1:15001, got '127.0.0.1:http'"),
        (":15006", "expected HOST:PORT such as 127.0.0.1:15001, got ':15006'"),
        ("::1:15006", "'::1:15006': write an IPv6 address in brackets, such as [::1]:15001"),
        ("[zz::1]:15006", "'[zz::1]:15006': 'zz::1' in brackets is not an IPv6 address"),
        ("[::1]:0", "[::1]:0 needs a port from 1 to 65535"),
    ],
)
def test_an_address_error_says_what_is_expected(tmp_path: Path, value: str, message: str) -> None:
    """Was: `Expected str matching regex '^[^\\s:]+:\\d{1,5}$' - at $.inbound.listen`."""
    assert error(write(tmp_path, inbound__listen=value)) == f"inbound.listen: {message}"


def test_bracketed_ipv6_addresses_are_accepted(tmp_path: Path) -> None:
    """The listeners bind them (tests/proxy/test_sidecar_start.py serves over ::1)."""
    config, _ = load_config(
        write(tmp_path, inbound__listen="[::1]:15006", outbound__upstream="[::1]:16006")
    )
    assert config.inbound is not None
    assert split_host_port(config.inbound.listen) == ("::1", 15006)
    assert split_host_port(config.outbound[0].upstream) == ("::1", 16006)


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        (
            "spiffe://cluster.local",
            "spiffe://cluster.local names a trust domain, not a workload, so no server can "
            "ever prove it: give the SPIFFE ID of payments, such as "
            "spiffe://cluster.local/ns/NAMESPACE/sa/SERVICE_ACCOUNT",
        ),
        ("payments", "invalid SPIFFE ID 'payments': the scheme is missing"),
    ],
)
def test_an_outbound_identity_must_name_a_workload(
    tmp_path: Path, identity: str, message: str
) -> None:
    """Was: spiffe://cluster.local accepted, and every call then refused as SNM."""
    assert error(write(tmp_path, outbound__identity=identity)).startswith(
        f"outbound[0].identity: {message}"
    )


@pytest.mark.parametrize(
    ("inbound", "outbound"),
    [
        ("127.0.0.1:15006", "127.0.0.1:15006"),
        ("0.0.0.0:15006", "127.0.0.1:15006"),
        ("[::1]:15006", "[0:0::1]:15006"),
        ("127.0.0.1:15006", "0.0.0.0:15006"),
    ],
)
def test_inbound_and_outbound_may_not_listen_on_one_address(
    tmp_path: Path, inbound: str, outbound: str
) -> None:
    """Was: accepted, and a bind error naming neither key after the join token was spent."""
    assert error(write(tmp_path, inbound__listen=inbound, outbound__listen=outbound)) == (
        f"inbound.listen ({inbound}) and outbound[0].listen ({outbound}) are the same "
        "address: give each listener a port of its own (only outbound HTTP entries may share "
        "one, by giving the same listen)"
    )


def test_listeners_on_other_ports_or_families_are_distinct(tmp_path: Path) -> None:
    load_config(write(tmp_path, inbound__listen="[::]:15006", outbound__listen="127.0.0.1:15006"))
    load_config(write(tmp_path, inbound__listen="127.0.0.1:15006", outbound__listen="[::1]:15006"))


def test_two_spellings_of_one_outbound_address_are_two_listeners(tmp_path: Path) -> None:
    second = {"service": "catalog", "listen": "0.0.0.0:15101", "upstream": "127.0.0.1:16007"}
    path = write(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["outbound"].append({**second, "identity": PAYMENTS.replace("payments", "catalog")})
    path.write_text(yaml.safe_dump(config))
    assert error(path).startswith(
        "outbound[0].listen (127.0.0.1:15101) and outbound[1].listen (0.0.0.0:15101) are the "
        "same address"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"inbound__app": "127.0.0.1:15006"},
            "inbound.app: 127.0.0.1:15006 is the sidecar's own listener 127.0.0.1:15006",
        ),
        (
            {"outbound__upstream": "127.0.0.1:15101"},
            "outbound[0].upstream: 127.0.0.1:15101 is the sidecar's own listener 127.0.0.1:15101",
        ),
    ],
)
def test_a_listener_that_forwards_to_itself_is_refused(
    tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    assert error(write(tmp_path, **changes)) == message


def test_a_data_dir_under_a_file_is_refused(tmp_path: Path) -> None:
    """Was: accepted; the SVID could not be saved after the join token was spent."""
    (tmp_path / "afile").write_text("")
    assert error(write(tmp_path, data_dir="./afile/sub")) == (
        f"data_dir: ./afile/sub: {tmp_path.resolve() / 'afile'} is not a directory"
    )
    assert error(write(tmp_path, data_dir="./afile")) == (
        f"data_dir: ./afile: {tmp_path.resolve() / 'afile'} is not a directory"
    )


def test_a_data_dir_to_be_made_is_accepted(tmp_path: Path) -> None:
    config, base = load_config(write(tmp_path, data_dir="./not/yet/made"))
    assert not (base / config.data_dir).exists()  # checking makes nothing

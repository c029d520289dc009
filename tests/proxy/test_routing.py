"""Host routing on a shared outbound listener (proxy/routing.py) and the config rules for
sharing a listen address (proxy/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.proxy.config import ConfigError, load_config, outbound_listeners
from auditmesh.proxy.routing import by_host, host_name, origin_form, service_names


def test_a_service_answers_to_its_kubernetes_names() -> None:
    assert service_names("payments", "shop") == (
        "payments",
        "payments.shop",
        "payments.shop.svc",
        "payments.shop.svc.cluster.local",
    )


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("payments", "payments"),
        ("Payments.Shop:8080", "payments.shop"),
        (" payments.shop.svc.cluster.local:80 ", "payments.shop.svc.cluster.local"),
        ("[::1]:15001", "[::1]"),
        ("[::1]", "[::1]"),
        ("payments:", "payments"),  # RFC 3986 §3.2.3: the port may be empty
        ("payments.shop.", "payments.shop"),  # a fully qualified name's final dot
        ("Payments.Shop.svc.cluster.local.:80", "payments.shop.svc.cluster.local"),
        ("a:b", "a:b"),
    ],
)
def test_host_name_drops_the_port_and_case(host: str, name: str) -> None:
    assert host_name(host) == name


@pytest.mark.parametrize(
    ("target", "form"),
    [
        ("/pay", None),
        ("*", None),  # asterisk-form (OPTIONS)
        ("ftp://catalog/file", None),  # not HTTP
        ("http://catalog/items?x=1", ("catalog", "/items?x=1")),  # RFC 9112 §3.2.2
        ("HTTP://catalog.shop:8080", ("catalog.shop:8080", "/")),
        ("https://user:pw@catalog#top", ("catalog", "/")),
        ("http://catalog?q=/x", ("catalog", "/?q=/x")),
        ("http://orders/admin/users", ("orders", "/admin/users")),
    ],
)
def test_origin_form_of_an_absolute_target(target: str, form: tuple[str, str] | None) -> None:
    assert origin_form(target) == form


def test_by_host_selects_by_name_and_refuses_the_rest() -> None:
    select = by_host({name: "pay" for name in service_names("payments", "shop")})
    assert select("payments.shop:443") == "pay"
    assert select("PAYMENTS") == "pay"
    assert select("payments.billing") is None
    assert select("") is None
    assert select(None) is None


def write(tmp_path: Path, outbound: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "workload: {name: orders, namespace: shop}\n"
        "server: {url: 'https://127.0.0.1:7443', bundle: ca.pem}\n"
        "data_dir: data\n"
        f"outbound:\n{outbound}"
    )
    return path


def entry(service: str, listen: int, protocol: str = "http") -> str:
    return (
        f"  - {{service: {service}, listen: '127.0.0.1:{listen}', upstream: '10.0.0.1:15006',"
        f" identity: 'spiffe://cluster.local/ns/shop/sa/{service}', protocol: {protocol}}}\n"
    )


def test_http_services_may_share_a_listen_address(tmp_path: Path) -> None:
    config, _ = load_config(
        write(tmp_path, entry("payments", 15001) + entry("catalog", 15001) + entry("db", 15002))
    )
    listeners = outbound_listeners(config.outbound)
    assert {listen: [t.service for t in ts] for listen, ts in listeners.items()} == {
        "127.0.0.1:15001": ["payments", "catalog"],
        "127.0.0.1:15002": ["db"],
    }


def test_a_tcp_service_may_not_share_its_port(tmp_path: Path) -> None:
    path = write(tmp_path, entry("payments", 15001) + entry("db", 15001, "tcp"))
    with pytest.raises(ConfigError, match=r"payments, db share listen 127\.0\.0\.1:15001.*TCP"):
        load_config(path)


def test_a_shared_listener_names_each_service_once(tmp_path: Path) -> None:
    path = write(tmp_path, entry("payments", 15001) + entry("payments", 15001))
    with pytest.raises(ConfigError, match="names a service twice"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (entry("payments", 99999), r"outbound\[0\]\.listen: 127\.0\.0\.1:99999 needs a port"),
        (entry("payments", 0), r"outbound\[0\]\.listen: 127\.0\.0\.1:0 needs a port"),
        (entry("payments", 15001).replace("sa/payments", "sa/pay ments"), r"outbound\[0\]\.id"),
        (entry("payments", 15001).replace("spiffe://cluster.local/ns/shop/sa/payments",
                                          "spiffe://"), r"outbound\[0\]\.identity"),
    ],
)  # fmt: skip
def test_bad_ports_and_spiffe_ids_are_refused_before_enrolling(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))

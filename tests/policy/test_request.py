"""The request value: normalisation and the `policy eval` JSON schema."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from auditmesh.policy.request import Request, RequestError


def test_normalisation() -> None:
    request = Request.of(
        destination_namespace="foo",
        destination_labels={"version": "v1", "app": "a"},
        source_principal="spiffe://cluster.local/ns/shop/sa/web",
        source_ip="10.0.0.1",
        path="/orders/1?expand=items#top",
        headers={"X-Forwarded-For": ["1.2.3.4", "5.6.7.8"], "User-Agent": "curl"},
    )
    assert request.source_principal == "cluster.local/ns/shop/sa/web"
    assert request.source_namespace == "shop"  # Istio derives it from the peer identity
    assert request.destination_labels == (("app", "a"), ("version", "v1"))
    assert request.path == "/orders/1"
    assert request.headers == {"x-forwarded-for": "1.2.3.4,5.6.7.8", "user-agent": "curl"}
    assert request.source_ip == ipaddress.ip_address("10.0.0.1")
    assert request.http


def test_without_http_attributes_it_is_tcp() -> None:
    assert not Request.of(destination_namespace="foo", destination_port=5432).http
    assert not Request.from_json({"destination": {"namespace": "foo"}}).http
    assert Request.from_json({"destination": {"namespace": "foo"}, "request": {}}).http


def test_full_json() -> None:
    request = Request.from_json(
        {
            "source": {"principal": "spiffe://td/ns/a/sa/b", "namespace": "a", "ip": "::1"},
            "destination": {"namespace": "d", "labels": {"app": "x"}, "ip": "10.1.1.1", "port": 80},
            "request": {"method": "GET", "path": "/", "host": "x", "headers": {"A": "1"}},
            "connection": {"sni": "x.example.com"},
        }
    )
    assert (request.source_namespace, request.destination_port, request.sni) == (
        "a",
        80,
        "x.example.com",
    )


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "request JSON: expected an object"),
        (
            {"destination": {"namespace": "a"}, "src": {}},
            "src: unknown key (expected one of: source,",
        ),
        (
            {"destination": {"namespace": "a"}, "source": {"user": "x"}},
            "source.user: unknown key (expected one of: principal, namespace, ip)",
        ),
        (
            {"destination": {"namespace": "a", "port": "80"}},
            "destination.port: expected an integer",
        ),
        (
            {"destination": {"namespace": "a", "port": 70000}},
            "destination.port: expected an integer",
        ),
        (
            {"destination": {"namespace": "a", "port": True}},
            "destination.port: expected an integer",
        ),
        ({"destination": {}}, "destination.namespace is required"),
        (
            {"destination": {"namespace": "a"}, "source": {"ip": "10.0.0"}},
            "source.ip: bad IP address",
        ),
        (
            {"destination": {"namespace": "a", "labels": {"app": 1}}},
            "destination.labels[app]: expected a string, got 1",
        ),
        (
            {"destination": {"namespace": "a"}, "request": {"headers": {"a": 1}}},
            "request.headers[a]: expected a string or a list of strings",
        ),
        (
            {"destination": {"namespace": "a"}, "source": {"principal": 7}},
            "source.principal: expected a string, got 7",
        ),
        (
            {
                "destination": {"namespace": "a"},
                "source": {"principal": "spiffe://td/ns/a/sa/b", "namespace": "b"},
            },
            "source.namespace 'b' contradicts the principal's namespace 'a'",
        ),
    ],
)
def test_bad_json(obj: Any, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        Request.from_json(obj)
    assert str(caught.value).startswith(message), str(caught.value)


def test_eval_requests_are_seen_as_the_sidecar_sees_them() -> None:
    # One header however its name is cased, IPv4-mapped peers as IPv4: otherwise `policy
    # eval` answers allow where the sidecar denies (the path: tests/policy/test_cli.py).
    request = Request.from_json(
        {
            "source": {"ip": "::ffff:10.0.0.1"},
            "destination": {"namespace": "prod"},
            "request": {"headers": {"X-Client": "bot-1", "x-client": "human"}},
        }
    )
    assert request.headers == {"x-client": "bot-1,human"}
    assert request.source_ip == ipaddress.ip_address("10.0.0.1")

"""`identity.server_tls`: no plain-HTTP path around the server's identity check."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from auditmesh.identity.ca import MeshCA
from auditmesh.identity.server_tls import server_client
from auditmesh.proxy.config import ConfigError, load_config


def test_a_plain_http_server_url_is_refused(mesh_ca: MeshCA) -> None:
    with pytest.raises(ValueError, match="must be https://"):
        server_client("http://127.0.0.1:7443", ssl.create_default_context(), mesh_ca.trust_bundle())


def test_a_sidecar_config_with_a_plain_http_server_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("workload: {name: orders}\nserver: {url: 'http://x:7443', bundle: ca.pem}\n")
    with pytest.raises(ConfigError, match=r"\$\.server\.url"):
        load_config(config)

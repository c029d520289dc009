"""Renewal (and every mTLS call) at the mesh listener needs an SVID that is current when the
request is made, not only when the connection was opened.

X509-SVID §5.1: "The validation of trust in a given SVID is based on standard X.509 path
validation, and MUST follow RFC 5280 path validation semantics"; RFC 5280 §6.1.3 (a)(2): "The
certificate validity period includes the current time." A sidecar whose SVID expired while
its keep-alive connection stayed open is no longer authenticated, so it must not be handed a
fresh SVID for that identity: it has to join again with a new token.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from auditmesh.identity.ca import MeshCA
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import make_csr
from auditmesh.identity.workload import Credentials, key_to_pem, new_private_key
from tests.server.meshserver import mesh_server

pytestmark = pytest.mark.integration
ORDERS = SpiffeId.kubernetes("cluster.local", "shop", "orders")


def test_an_svid_that_expired_on_an_open_connection_is_not_renewed(tmp_path: Path) -> None:
    with mesh_server(tmp_path / "data") as mesh:
        key = new_private_key()
        issued = datetime.now(UTC)
        pem = MeshCA.load(mesh.data).issue_svid(
            make_csr(key), ORDERS, timedelta(seconds=2), now=issued
        )
        credentials = Credentials(ORDERS, key_to_pem(key), pem, mesh.bundle())
        not_after = credentials.not_after
        with httpx.Client(base_url=mesh.mesh_url, verify=credentials.client_context()) as client:
            # the connection is opened (and the SVID checked) while the SVID is current
            first = client.post("/v1/identity/renew", json={"csr": "not a CSR"})
            assert first.status_code == 400, first.text  # authenticated; the CSR refused
            # keep the connection busy (uvicorn closes it after 5 s idle) until it expired
            while datetime.now(UTC) <= not_after + timedelta(seconds=1):
                assert client.get("/v1/identity/bundle").status_code == 200
                time.sleep(0.3)
            renewed = client.post(
                "/v1/identity/renew", json={"csr": make_csr(new_private_key()).decode()}
            )
        assert renewed.status_code == 403, renewed.text
        assert "expired" in renewed.json()["error"]

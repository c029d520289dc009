"""identity/workload.py SelfIssued: the server's own SVID, renewed in the listener's context."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from auditmesh.identity.ca import MeshCA
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.workload import SelfIssued

pytestmark = pytest.mark.integration


async def served_certificate(port: int, bundle: bytes) -> x509.Certificate:
    context = ssl.create_default_context(cadata=bundle.decode())
    context.check_hostname = False
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


def test_renewal_serves_a_new_certificate_from_the_same_context(mesh_ca: MeshCA) -> None:
    server_id = SpiffeId.audit_server(mesh_ca.trust_domain)
    now = datetime.now(UTC)
    own = SelfIssued(mesh_ca, server_id, timedelta(hours=2), now)
    first = own.credentials.certificate
    assert (
        own.renew_at
        == first.not_valid_before_utc + (first.not_valid_after_utc - first.not_valid_before_utc) / 2
    )

    async def scenario() -> tuple[x509.Certificate, x509.Certificate]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=own.context)
        port = server.sockets[0].getsockname()[1]
        bundle = mesh_ca.trust_bundle()
        try:
            before = await served_certificate(port, bundle)
            own.renew(now + timedelta(minutes=4))  # still valid now, with the 5 min skew
            return before, await served_certificate(port, bundle)
        finally:
            server.close()

    before, after = asyncio.run(scenario())
    assert before.serial_number == first.serial_number
    assert after.serial_number == own.credentials.certificate.serial_number != first.serial_number
    assert after.not_valid_after_utc > before.not_valid_after_utc

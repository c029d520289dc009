"""The audit events of the mesh CA: SVIDs issued and renewed, join tokens minted, refusals.

Issuance is an audit event (issue 3) whichever way it happens: a sidecar's join or renewal at
the server (`server/mesh.py`), or an operator's `auditmesh ca issue` / `ca token` (`cli/ca.py`,
queued through `pending.py`). All of them have kind `identity` (or `authn` for a refusal),
the workload's SPIFFE ID as the source identity, and the action in label `identity.action`.
"""

from __future__ import annotations

import os
import pwd
import socket
import time

from cryptography import x509

from auditmesh.events import TLS, AuditEvent, Error, Peer, new_event_id
from auditmesh.identity.svid import cert_sha256

CA_SERVICE = "auditmesh-ca"


def identity_event(
    *,
    reporter: str,
    action: str,
    subject: str | None,
    destination: Peer,
    failure: str | None = None,
    cert_pem: bytes | None = None,
    client: str | None = None,
    labels: dict[str, str] | None = None,
) -> AuditEvent:
    """One CA action: `subject` the workload's SPIFFE ID (None when a refusal came before one
    was known), `cert_pem` the SVID issued, if any, `client` the caller's address."""
    tls = None
    if cert_pem is not None:
        cert = x509.load_pem_x509_certificate(cert_pem)
        tls = TLS(
            mutual=True,
            peer_cert_sha256=cert_sha256(cert),
            peer_not_after=int(cert.not_valid_after_utc.timestamp()),
        )
    return AuditEvent(
        id=new_event_id(),
        time_ns=time.time_ns(),
        reporter=reporter,
        kind="identity" if failure is None else "authn",
        outcome="success" if failure is None else "failure",
        source=Peer(identity=subject, ip=client),
        destination=destination,
        tls=tls,
        error=None if failure is None else Error(type=action, message=failure),
        labels={"identity.action": action, **(labels or {})},
        attested=True,
    )


def operator() -> str:
    """Who runs this command, as `user@host` (the CLI's reporter and operator label): the
    name of the process's real uid, not $USER or $LOGNAME (`getpass.getuser`), which anyone
    can set to anyone else's name for one command."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # no name for this uid (a bare container)
        user = f"uid-{uid}"
    return f"{user}@{socket.gethostname() or 'localhost'}"


def by_hand(
    action: str, subject: str, *, cert_pem: bytes | None = None, labels: dict[str, str]
) -> AuditEvent:
    """An operator's `auditmesh ca …` action, reported by the CLI that did it."""
    who = operator()
    return identity_event(
        reporter=f"auditmesh-ca-cli:{who}",
        action=action,
        subject=subject,
        destination=Peer(service=CA_SERVICE),
        cert_pem=cert_pem,
        labels={"identity.channel": "cli", "identity.operator": who, **labels},
    )

"""`x-forwarded-client-cert` in Envoy's format, for the app behind the inbound sidecar.

Envoy: `By=<URI SAN of this proxy>;Hash=<SHA-256 of the peer certificate, hex>;URI=<peer
URI SAN>` (Envoy docs, "x-forwarded-client-cert"). The inbound sidecar removes any XFCC
header that arrives from outside, so the app can trust the one it sees.
"""

from __future__ import annotations

HEADER = b"x-forwarded-client-cert"


def _quote(value: str) -> str:
    # Values holding ',', ';' or '=' are double-quoted; '"' is escaped (Envoy's rules).
    if any(c in value for c in ',;="'):
        return '"' + value.replace('"', '\\"') + '"'
    return value


def xfcc_value(local_id: str, peer_cert_sha256: str, peer_id: str) -> bytes:
    return f"By={_quote(local_id)};Hash={peer_cert_sha256};URI={_quote(peer_id)}".encode()

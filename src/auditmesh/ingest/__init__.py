"""Ingest adapters: telemetry from meshes and OpenTelemetry turned into audit events.

`envoy` (Istio/Envoy access-log lines, TEXT and JSON), `linkerd` (Linkerd's JSON access log)
and `otlp` (the OTLP receiver's mapping) are pure: a line or a request in, `AuditEvent`s
out, each marked `attested=False` with a `reporter` naming the source. `follow` reads a
growing file with a persisted offset; `auditmesh ingest` (cli/ingest.py) and the server's
OTLP endpoints do the I/O. Imports `events` only (DESIGN.md, direction of imports).
"""

"""Exporters: the audit trail handed to the tools teams already run.

Readers only (DESIGN.md, "Data flows one way"): they read committed ledger entries and never
write back into the log.

    ecs.py      AuditEvent -> Elastic Common Schema document (pure), NDJSON for Filebeat
    otlp.py     AuditEvent -> OTLP LogRecord (pure) and a sender over OTLP/HTTP or OTLP/gRPC
    cursor.py   the persisted resume position (next ledger index) of an exporter

The I/O loop that tails the ledger and drives them is `auditmesh.cli.export`.
"""

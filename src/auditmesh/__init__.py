"""auditmesh: a tamper-evident audit trail for service-to-service calls."""

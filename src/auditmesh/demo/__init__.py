"""`auditmesh demo`: a shop mesh on loopback with planted trouble (see run.py)."""

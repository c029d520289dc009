"""Workload identity: SPIFFE IDs, the mesh CA, join tokens and X.509-SVID checks.

Its place in the house (DESIGN.md): the mesh CA issues SPIFFE X.509-SVIDs to sidecars, which
prove who is calling whom; every audit event's identities come from here.

- ``spiffe``: SPIFFE ID values, parsing and validation (pure).
- ``ca``: the mesh CA on disk (``auditmesh ca init``) and SVID issuance from CSRs.
- ``tokens``: one-time join tokens that bootstrap a sidecar's first SVID.
- ``svid``: checks on a peer's certificate, fingerprints, CSRs and renewal timing.

Imports ``cryptography`` and nothing of the project outside this package.
"""

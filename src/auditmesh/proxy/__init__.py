"""The sidecar proxy: the data plane's HTTP/1.1 and TCP forwarding with mTLS and auditing.

Layers, outermost first: the listener/pool module (sockets, TLS, timeouts) carries out what the
pure layers decide; :mod:`auditmesh.proxy.http1` is the sans-IO HTTP/1.1 framing core (h11's
shape: ``receive_data`` / ``next_event`` / ``send``), with its vocabulary in
:mod:`auditmesh.proxy.http1_events` and header-field utilities in :mod:`auditmesh.proxy.headers`.
No logic lives here.
"""

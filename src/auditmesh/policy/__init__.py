"""Istio-compatible authorization: policy loading, compiled evaluation, mTLS modes.

``documents`` reads YAML, ``model`` and ``rules`` turn it into frozen values, ``matchers`` and
``engine`` evaluate requests to a frozen ``Decision``, ``peerauth`` resolves PeerAuthentication
modes. Everything here is pure except ``documents``; the sidecar and the CLI sit on top.
"""

"""The demo's story: a small shop mesh, its policies, and the trouble planted in its traffic.

Pure data and time arithmetic: which service misbehaves when (as fractions of the run), so
the apps, the traffic drivers and the end-to-end test agree on what should be found.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "shop"
SERVICES = ("frontend", "catalog", "orders", "payments", "batch-report")

# service -> the services it calls (through its sidecar's outbound listeners)
CALLS: dict[str, tuple[str, ...]] = {
    "frontend": ("catalog", "orders"),
    "catalog": (),
    "orders": ("payments", "catalog"),
    "payments": (),
    "batch-report": ("catalog", "orders", "payments"),
}
SERVED = ("frontend", "catalog", "orders", "payments")  # batch-report is a job, not a server


@dataclass(frozen=True, slots=True)
class Window:
    start: float  # fraction of the run
    end: float

    def active(self, fraction: float) -> bool:
        return self.start <= fraction < self.end


@dataclass(frozen=True, slots=True)
class Trouble:
    """What goes wrong, and when. Each entry is a problem `auditmesh findings` must name."""

    catalog_errors: Window = Window(0.45, 0.62)  # error burst in catalog
    batch_hammering: Window = Window(0.55, 0.85)  # batch-report pulls huge exports from orders
    batch_denied: Window = Window(0.30, 1.00)  # batch-report keeps trying payments: denied
    new_caller: Window = Window(0.50, 1.00)  # orders starts calling catalog: a new edge
    intruder: Window = Window(0.70, 0.80)  # a client without a certificate calls orders


TROUBLE = Trouble()

POLICIES = f"""\
# Mesh-wide mTLS, except the frontend, which takes plaintext from outside the mesh.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: frontend-edge, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: frontend}}}}
  mtls: {{mode: PERMISSIVE}}
---
# payments accepts only orders.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: payments-only-orders, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: payments}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/{NAMESPACE}/sa/orders"]}}}}]
---
# catalog: the frontend and orders; batch-report may only read.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: catalog-readers, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/{NAMESPACE}/sa/frontend",
                                     "cluster.local/ns/{NAMESPACE}/sa/orders"]}}}}]
  - from: [{{source: {{principals: ["cluster.local/ns/{NAMESPACE}/sa/batch-report"]}}}}]
    to: [{{operation: {{methods: ["GET"]}}}}]
---
# orders: the frontend, and batch-report's read-only exports.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-callers, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/{NAMESPACE}/sa/frontend"]}}}}]
  - from: [{{source: {{principals: ["cluster.local/ns/{NAMESPACE}/sa/batch-report"]}}}}]
    to: [{{operation: {{methods: ["GET"], paths: ["/orders/export*"]}}}}]
"""

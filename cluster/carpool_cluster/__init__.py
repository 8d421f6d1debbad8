"""A real local Kubernetes control plane, Prometheus and process kubelet for tests and the demo.

Nothing here is imported by the operator, the worker or the policy; it is the substrate they
are tested on when no cluster is given.
"""

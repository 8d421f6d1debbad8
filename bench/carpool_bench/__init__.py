"""Load generation and measurement against running workers: open-loop replay (`replay`), the
model-against-worker comparison `carpool fidelity` (`fidelity`).

It talks to workers over HTTP only, and uses the simulator for its predictions; it imports
neither the worker nor the operator.
"""

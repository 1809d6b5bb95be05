"""Gateway API (and the Kubernetes core kinds it refers to) as an input format.

`format.py` registers one format per apiVersion; `kinds.py` checks each document's shape
(`shape.py`); `compile.py` turns all documents together into the model and the status of each
GatewayClass, Gateway, listener and route. See docs/gateway-api.md.
"""

"""meshpilot: an Envoy xDS management server.

Policy files go in; an immutable model comes out; pure translators turn the model into Envoy
resources per proxy view; the xDS server hands each Envoy exactly what changed.
"""

__version__ = "0.1.0"

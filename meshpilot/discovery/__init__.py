"""Discovery: where endpoints come from at run time, besides the policy's static ones.

    registry.py       EndpointRegistry: discovered instances per service (thread-safe, TTLs)
    http_api.py       the self-registration API (/v1/registrations) on the admin address
    docker_source.py  Docker containers labelled `meshpilot.service` / `meshpilot.port`

Must not know about Envoy: sources feed the registry; the controller turns the registry's
endpoints into ClusterLoadAssignments (the EDS fast path, see docs/discovery.md).
"""

from meshpilot.discovery.registry import EndpointRegistry, Instance

__all__ = ["EndpointRegistry", "Instance"]

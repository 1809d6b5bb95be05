"""The mesh's built-in certificate authority (docs/security.md).

    authority.py   the root (EC P-256), created into a CA directory or loaded from it, and
                   pure issuance of SPIFFE workload certificates (the clock is a parameter)
    workloads.py   the current certificate of each identity, issued on first use and renewed
                   at half-life; what the controller's rotation timer asks
"""

from meshpilot.ca.authority import (
    DEFAULT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    CaError,
    CertificateAuthority,
    WorkloadCertificate,
    spiffe_id,
)
from meshpilot.ca.workloads import WorkloadIdentities

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_TRUST_DOMAIN", "CaError", "CertificateAuthority",
           "WorkloadCertificate", "WorkloadIdentities", "spiffe_id"]

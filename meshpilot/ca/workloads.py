"""The current workload certificate of each identity: issued on first use, renewed at
half-life by the caller's timer (`renew_due`), forgotten when no view needs it any more.

Thread-safe: views are built on the reload's worker thread while the rotation timer runs on the
event loop. The clock is injected (`clock`, POSIX seconds), so the schedule is testable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from meshpilot.ca.authority import DEFAULT_NAMESPACE, CertificateAuthority, WorkloadCertificate

DEFAULT_TTL = 24 * 3600.0


class WorkloadIdentities:
    """What translators ask for a view's identity (`translators/mtls.py`'s IdentitySource)."""

    def __init__(self, ca: CertificateAuthority, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time, namespace: str = DEFAULT_NAMESPACE):
        if ttl <= 0:
            raise ValueError("the certificate TTL must be positive")
        self.ca = ca
        self.ttl = ttl
        self.clock = clock
        self.namespace = namespace
        self._current: dict[str, WorkloadCertificate] = {}  # by name (a service or gateway)
        # A name whose policy says its SPIFFE ID (an Istio workload's service account) keeps
        # that ID through renewals; the others get spiffe_id(name).
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain

    @property
    def trust_bundle(self) -> bytes:
        return self.ca.trust_bundle

    def spiffe_id(self, name: str) -> str:
        return self.ca.spiffe_id(name, self.namespace)

    def certificate(self, name: str, spiffe_id: str | None = None) -> WorkloadCertificate:
        """The current certificate of `name`, issued now if it has none (or only an expired
        one, or one of another SPIFFE ID than `spiffe_id`, when given). Renewal before expiry
        is `renew_due`'s, so that it is pushed to every view."""
        with self._lock:
            found = self._current.get(name)
            now = self.clock()
            wanted = spiffe_id or self._ids.get(name) or self.spiffe_id(name)
            if spiffe_id is not None:
                self._ids[name] = spiffe_id
            if found is None or now >= found.not_after or found.spiffe_id != wanted:
                found = self._current[name] = self.ca.issue(wanted, now, self.ttl)
            return found

    def names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._current)

    def next_renewal(self) -> float | None:
        """When the next certificate is due for renewal (None: none issued)."""
        with self._lock:
            return min((c.renew_at for c in self._current.values()), default=None)

    def renew_due(self, keep: Iterable[str] | None = None) -> set[str]:
        """Re-issue every certificate past its half-life; forget identities not in `keep` (no
        view needs them). Returns the names whose certificate changed."""
        now = self.clock()
        renewed: set[str] = set()
        with self._lock:
            if keep is not None:
                wanted = set(keep)
                for name in [n for n in self._current if n not in wanted]:
                    del self._current[name]
                    self._ids.pop(name, None)
            for name, current in list(self._current.items()):
                if now >= current.renew_at:
                    self._current[name] = self.ca.issue(
                        self._ids.get(name) or self.spiffe_id(name), now, self.ttl)
                    renewed.add(name)
        return renewed

    # ---- a root rotation (ca/rotation.py; the runtime's runtime/ca_rotation.py) -------------

    def set_authority(self, ca: CertificateAuthority) -> None:
        """Issue from `ca` from now on, and send its trust bundle. Certificates already issued
        stay until `reissue` or their renewal."""
        if ca.trust_domain != self.ca.trust_domain:
            raise ValueError(f"trust domain {ca.trust_domain} is not {self.ca.trust_domain}")
        with self._lock:
            self.ca = ca

    def stragglers(self) -> frozenset[str]:
        """The names whose current certificate another root than the signing one signed."""
        with self._lock:
            signer = self.ca.root_fingerprint
            return frozenset(n for n, c in self._current.items() if c.root != signer)

    def reissue(self, names: Iterable[str]) -> set[str]:
        """A new certificate from the signing root for each of `names` that has one now."""
        now = self.clock()
        done: set[str] = set()
        with self._lock:
            for name in names:
                if name in self._current:
                    self._current[name] = self.ca.issue(
                        self._ids.get(name) or self.spiffe_id(name), now, self.ttl)
                    done.add(name)
        return done

    def by_root(self) -> dict[str, int]:
        """How many current certificates each root signed (by fingerprint)."""
        with self._lock:
            counts: dict[str, int] = {}
            for current in self._current.values():
                counts[current.root] = counts.get(current.root, 0) + 1
            return counts

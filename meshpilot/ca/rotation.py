"""Rotating the mesh CA root without a workload noticing (docs/security.md, "Rotating the root").

The rotation is a state machine over the roots Envoys trust and the root that signs. Every step
adds trust before it uses it, and removes trust only after nothing uses it any more, as Istio's
and Linkerd's root rotations do:

    idle          one root A: it signs, the bundle is [A]
      | start      a new root B is made
    adding-root   A still signs, the bundle is [A, B]: every Envoy learns to trust B while
                  every certificate it sees still comes from A
      | promote    (once every connected Envoy holds the bundle)
    overlap       B signs (workload certificates re-issued at once or at their renewal); the
                  bundle is [B, A]; the xDS serving certificate still comes from A, so Envoys
                  whose bootstrap trusts only A keep connecting
      | finish     (`finish-rotation`, or automatically once `finish_after` has passed)
    idle          B alone: the bundle is [B], the xDS serving certificate comes from B, A's key
                  is forgotten

The state is pure (`RotationState`: every transition takes the time as a parameter and returns
a new state, or raises RotationError saying why not); `RootStore` keeps it on disk in the CA
folder, so a restart in the middle of a rotation resumes where it stood:

    ca-rotation.json  the rotation in progress (0600: it holds the roots' keys), the one file
                      that decides; absent when idle
    ca.crt            the trust bundle, the signing root first: what Envoy bootstraps and
                      `--write-node-credentials` folders name, rewritten at every step
    ca.key            the signing root's key (0600)

Each step writes `ca-rotation.json` first (atomically), then the two files derived from it;
a crash between them is repaired at the next load, which re-derives them from the state file.
Nothing here reads a clock or talks to an Envoy: that is the runtime's (runtime/ca_rotation.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshpilot.base.privatefiles import write_private
from meshpilot.ca.authority import (
    DEFAULT_TRUST_DOMAIN,
    ROOT_CERT,
    ROOT_KEY,
    CaError,
    CertificateAuthority,
)

log = logging.getLogger("meshpilot.ca.rotation")

STATE_FILE = "ca-rotation.json"
IDLE, ADDING_ROOT, OVERLAP = "idle", "adding-root", "overlap"
PHASES = (IDLE, ADDING_ROOT, OVERLAP)
REISSUE_NOW, REISSUE_AT_RENEWAL = "now", "at-renewal"
REISSUE_MODES = (REISSUE_NOW, REISSUE_AT_RENEWAL)
DEFAULT_OVERLAP = 24 * 3600.0
_FORMAT = 1


class RotationError(CaError):
    """A step the rotation cannot take now (the message says why; shown to the operator)."""


@dataclass(frozen=True)
class RotationState:
    """Where a root rotation stands. `signer` signs workload certificates; `other` is the
    second trusted root: the coming one (adding-root) or the outgoing one (overlap)."""

    phase: str
    signer: CertificateAuthority = field(compare=False)
    other: CertificateAuthority | None = field(default=None, compare=False)
    started_at: float | None = None
    promoted_at: float | None = None
    finish_after: float | None = None  # finish automatically from then on; None: by hand
    overlap: float | None = None  # seconds, from promotion to the automatic finish
    reissue: str = REISSUE_NOW
    finished_at: float | None = None  # idle: when the last rotation finished

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise RotationError(f"unknown rotation phase {self.phase!r}")
        if (self.phase == IDLE) != (self.other is None):
            raise RotationError(f"phase {self.phase} with {'no' if self.other is None else 'a'} "
                                "second root")

    @classmethod
    def single(cls, root: CertificateAuthority) -> RotationState:
        return cls(IDLE, root.with_trusted(()))

    # ---- what Envoys see --------------------------------------------------------------------

    @property
    def authority(self) -> CertificateAuthority:
        """What issues workload certificates, with the bundle every view is sent."""
        if self.other is None:
            return self.signer
        return self.signer.with_trusted((self.other.root,))

    @property
    def server_authority(self) -> CertificateAuthority:
        """What issues meshpilot's own xDS serving certificate: the root every Envoy
        bootstrapped before the rotation trusts (A until the finish), so none is cut off."""
        return self.other if self.phase == OVERLAP and self.other is not None else self.signer

    @property
    def roots(self) -> tuple[CertificateAuthority, ...]:
        return (self.signer,) if self.other is None else (self.signer, self.other)

    def finish_due(self, now: float) -> bool:
        return self.phase == OVERLAP and self.finish_after is not None and now >= self.finish_after

    # ---- transitions --------------------------------------------------------------------------

    def start(self, new_root: CertificateAuthority, now: float,
              overlap: float | None = DEFAULT_OVERLAP,
              reissue: str = REISSUE_NOW) -> RotationState:
        """idle -> adding-root: `new_root` joins the bundle; the current root still signs.
        `overlap`: how long after promotion to finish by itself (None: only by hand)."""
        if self.phase != IDLE:
            raise RotationError(f"a root rotation is already in progress (phase {self.phase}); "
                                "finish it first (`meshpilot ca finish-rotation`)")
        if reissue not in REISSUE_MODES:
            raise RotationError(f"reissue must be one of {', '.join(REISSUE_MODES)}")
        if overlap is not None and overlap < 0:
            raise RotationError("the overlap must not be negative")
        if new_root.trust_domain != self.signer.trust_domain:
            raise RotationError(f"the new root is for trust domain {new_root.trust_domain}, "
                                f"not {self.signer.trust_domain}")
        if new_root.root_fingerprint == self.signer.root_fingerprint:
            raise RotationError("the new root is the current root")
        return RotationState(ADDING_ROOT, self.signer, new_root.with_trusted(()),
                             started_at=now, overlap=overlap, reissue=reissue)

    def promote(self, now: float) -> RotationState:
        """adding-root -> overlap: the new root signs; the old one is still trusted."""
        if self.phase != ADDING_ROOT or self.other is None:
            raise RotationError(f"nothing to promote in phase {self.phase}")
        finish_after = None if self.overlap is None else now + self.overlap
        return replace(self, phase=OVERLAP, signer=self.other, other=self.signer,
                       promoted_at=now, finish_after=finish_after)

    def finish(self, now: float) -> RotationState:
        """overlap -> idle: the old root leaves the bundle and its key is forgotten. The caller
        must have re-issued every certificate the old root signed first (`stragglers`)."""
        if self.phase != OVERLAP:
            raise RotationError(
                "no rotation to finish" if self.phase == IDLE else
                "the new root is not signing yet (phase adding-root: every Envoy must hold the "
                "new bundle first); finish after it moved to overlap")
        return RotationState(IDLE, self.signer, finished_at=now)

    # ---- description --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """For /debug/status and `meshpilot status`: fingerprints and dates, never a key."""
        def root(ca: CertificateAuthority, role: str) -> dict[str, Any]:
            return {"fingerprint": ca.root_fingerprint, "role": role,
                    "subject": ca.root.subject.rfc4514_string(),
                    "not_before": ca.root.not_valid_before_utc.isoformat(),
                    "not_after": ca.root.not_valid_after_utc.isoformat()}
        roles = {IDLE: ("signing", None), ADDING_ROOT: ("signing", "trusted (next)"),
                 OVERLAP: ("signing", "trusted (previous)")}[self.phase]
        roots = [root(self.signer, roles[0])]
        if self.other is not None and roles[1] is not None:
            roots.append(root(self.other, roles[1]))
        return {"phase": self.phase, "roots": roots, "reissue": self.reissue,
                "xds_serving_root": self.server_authority.root_fingerprint,
                "started_at": _iso(self.started_at), "promoted_at": _iso(self.promoted_at),
                "finish_after": _iso(self.finish_after),
                "overlap_seconds": self.overlap, "finished_at": _iso(self.finished_at)}


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def new_root(trust_domain: str, now: float) -> CertificateAuthority:
    """The next root: its subject names when it was made, so two roots never share a name."""
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    return CertificateAuthority.create(trust_domain, now=when,
                                       label=f"root {when.strftime('%Y-%m-%dT%H:%M:%SZ')}")


# ---- on disk ----------------------------------------------------------------------------------


def _encode_root(ca: CertificateAuthority) -> dict[str, str]:
    return {"certificate": ca.root.public_bytes(serialization.Encoding.PEM).decode(),
            "key": base64.b64encode(ca.key_pem()).decode()}


def _decode_root(data: Any, trust_domain: str, where: str) -> CertificateAuthority:
    try:
        cert = x509.load_pem_x509_certificate(data["certificate"].encode())
        key = serialization.load_pem_private_key(base64.b64decode(data["key"]), password=None)
    except (KeyError, TypeError, ValueError) as e:
        raise CaError(f"{where}: a root that does not load ({type(e).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CaError(f"{where}: a root whose key is not its certificate's")
    return CertificateAuthority(key, cert, trust_domain)


class RootStore:
    """The rotation state in a CA folder (see the module docstring for the files)."""

    def __init__(self, folder: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN):
        self.folder = folder
        self.trust_domain = trust_domain
        self.state_path = folder / STATE_FILE

    def load_or_create(self) -> RotationState:
        """The state of the folder: the rotation in progress, else its one root (created on
        first start, as `CertificateAuthority.load_or_create` does)."""
        if not self.state_path.exists():
            return RotationState.single(
                CertificateAuthority.load_or_create(self.folder, self.trust_domain))
        state = self._read()
        self._export(state)  # repairs ca.crt/ca.key after a crash between the writes
        return state

    def _read(self) -> RotationState:
        where = str(self.state_path)
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as e:
            raise CaError(f"cannot read {where}: {type(e).__name__}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise CaError(f"{where}: not a meshpilot root rotation (format {_FORMAT})")
        if self.state_path.stat().st_mode & 0o077:
            log.warning("%s is readable by others: chmod 600 it", where)
        try:
            return RotationState(
                phase=data["phase"],
                signer=_decode_root(data["signer"], self.trust_domain, where),
                other=_decode_root(data["other"], self.trust_domain, where),
                started_at=data.get("started_at"), promoted_at=data.get("promoted_at"),
                finish_after=data.get("finish_after"), overlap=data.get("overlap"),
                reissue=data.get("reissue", REISSUE_NOW))
        except (KeyError, TypeError) as e:
            raise CaError(f"{where}: missing or malformed {e}") from None

    def save(self, state: RotationState) -> None:
        """Commit `state`: the state file first, then the bundle and key derived from it; when
        idle, the two files alone (and the state file removed last)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if state.phase == IDLE:
            self._export(state)
            self.state_path.unlink(missing_ok=True)
            return
        assert state.other is not None
        data = {"format": _FORMAT, "phase": state.phase, "signer": _encode_root(state.signer),
                "other": _encode_root(state.other), "started_at": state.started_at,
                "promoted_at": state.promoted_at, "finish_after": state.finish_after,
                "overlap": state.overlap, "reissue": state.reissue}
        write_private(self.state_path, (json.dumps(data, indent=1) + "\n").encode())
        self._export(state)

    def _export(self, state: RotationState) -> None:
        authority = state.authority
        bundle, key = self.folder / ROOT_CERT, self.folder / ROOT_KEY
        # The key before the bundle: a reader of the pair (CertificateAuthority.load) finds the
        # key's certificate in either bundle, the one before or the one after.
        if not key.exists() or key.read_bytes() != authority.key_pem():
            write_private(key, authority.key_pem())
        if not bundle.exists() or bundle.read_bytes() != authority.trust_bundle:
            write_private(bundle, authority.trust_bundle)

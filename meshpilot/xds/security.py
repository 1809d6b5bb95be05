"""Securing the xDS port: TLS, mutual TLS, and which view a connected Envoy may ask for.

- `XdsTls` names the files: meshpilot's certificate and key, and optionally the CA that client
  certificates must chain to (mutual TLS). `ServerCertificates` turns them into gRPC credentials
  that re-read the files when they change: gRPC asks for the certificate configuration at every
  TLS handshake (`grpc.dynamic_ssl_server_credentials`, which works with grpc.aio), and we answer
  "unchanged" unless a file's size or modification time moved. A replacement that does not load
  (a key that does not match its certificate, say) is logged and the previous one keeps serving.
- `peer_identity` reads who the client proved to be from the gRPC auth context, and
  `IdentityCheck` is the rule: a node's view (by default `node.cluster`) must be one of the names
  its certificate proves, otherwise the stream is refused with PERMISSION_DENIED. The names are:
    1. the service account of each SPIFFE URI SAN `spiffe://<trust domain>/ns/<ns>/sa/<name>`
       (the workload certificates of meshpilot's own CA carry one); when a certificate has such
       a SAN, its DNS SANs and CN are not identities;
    2. otherwise every DNS SAN; 3. otherwise the subject CN.
  An Envoy cannot claim another service's view to receive its keys.

Messages never include file contents: a private key must not reach a log line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from meshpilot.base.tlsfiles import TlsFileError, read_ca, read_certificate

log = logging.getLogger("meshpilot.xds.security")

IDENTITY_CHECKS = ("strict", "off")
_SPIFFE_SA = re.compile(r"^spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)$")


class XdsSecurityError(ValueError):
    """Settings for the xDS port that cannot work; the message is safe to show."""


@dataclass(frozen=True)
class XdsTls:
    cert: str
    key: str
    client_ca: str | None = None  # set: clients must present a certificate signed by it


def check_settings(cert: str | None, key: str | None, client_ca: str | None,
                   identity_check: str | None) -> tuple[XdsTls | None, str]:
    """(TLS files or None for plaintext, the identity check in force) or XdsSecurityError.

    `identity_check` None means the default: "strict" with a client CA, "off" without."""
    if (cert is None) != (key is None):
        raise XdsSecurityError("--xds-tls-cert and --xds-tls-key go together")
    if client_ca is not None and cert is None:
        raise XdsSecurityError("--xds-client-ca needs --xds-tls-cert and --xds-tls-key "
                               "(mutual TLS is TLS first)")
    check = identity_check or ("strict" if client_ca else "off")
    if check not in IDENTITY_CHECKS:
        raise XdsSecurityError(f"--xds-identity-check must be one of {', '.join(IDENTITY_CHECKS)}")
    if check == "strict" and client_ca is None:
        raise XdsSecurityError("--xds-identity-check strict needs --xds-client-ca: without "
                               "client certificates no identity is proven")
    return (XdsTls(cert, key, client_ca) if cert and key else None), check


def _signature(paths: Iterable[str]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


class ServerCertificates:
    """meshpilot's xDS certificate (and client CA), reloaded when the files change."""

    def __init__(self, tls: XdsTls):
        self.tls = tls
        self._lock = threading.Lock()
        self._paths = tuple(p for p in (tls.cert, tls.key, tls.client_ca) if p)
        self._seen = _signature(self._paths)
        self._initial = self._load()  # raises XdsSecurityError: refuse to start without it
        self.serial = self._serial

    def _load(self) -> Any:
        try:
            cert, key, info = read_certificate(self.tls.cert, self.tls.key)
            ca = read_ca(self.tls.client_ca) if self.tls.client_ca else None
        except TlsFileError as error:
            raise XdsSecurityError(f"xDS TLS: {error}") from None
        self._serial = info.serial
        self.names = info.names
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch,
            require_client_authentication=self.tls.client_ca is not None)

    def _fetch(self) -> Any:
        """Called by gRPC (on one of its threads) at every handshake: None keeps the current
        configuration; a new one is used from this handshake on."""
        signature = _signature(self._paths)
        with self._lock:
            if signature == self._seen:
                return None
            self._seen = signature
            try:
                config = self._load()
            except XdsSecurityError as error:
                log.warning("%s; the previous xDS certificate keeps serving", error)
                return None
        self.serial = self._serial
        log.info("xDS certificate reloaded: %s (serial %x)", ", ".join(self.names), self.serial)
        return config

    def describe(self) -> str:
        """For the start-up log line: no file contents, only names."""
        client = (f", clients must present a certificate signed by {self.tls.client_ca}"
                  if self.tls.client_ca else "")
        return f"TLS as {', '.join(self.names)}{client}"


# ----- who the peer is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerIdentity:
    names: tuple[str, ...]  # the views this peer may ask for
    source: str  # "spiffe", "dns", "cn" or "none"
    described: str  # for log lines: the SANs or CN the names came from

    def __str__(self) -> str:
        return self.described


def _first(values: Iterable[bytes] | None) -> list[str]:
    return [v.decode("utf-8", "replace") for v in values or ()]


def peer_identity(auth_context: Mapping[str, Iterable[bytes]]) -> PeerIdentity:
    """The identity proven by a TLS client certificate, from `context.auth_context()`.

    The certificate itself (`x509_pem_cert`) is parsed when present, so URI and DNS SANs are
    told apart whatever the gRPC version exposes; otherwise gRPC's `peer_uri`, `peer_dns` and
    `x509_common_name` properties are used."""
    uris: list[str] = []
    dns: list[str] = []
    cns: list[str] = []
    pem = auth_context.get("x509_pem_cert")
    if pem:
        cert = x509.load_pem_x509_certificate(next(iter(pem)))
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = list(san.get_values_for_type(x509.UniformResourceIdentifier))
            dns = list(san.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            pass
        cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    else:
        uris = _first(auth_context.get("peer_uri"))
        dns = _first(auth_context.get("peer_dns"))
        cns = _first(auth_context.get("x509_common_name"))
    spiffe = [m.group(3) for u in uris if (m := _SPIFFE_SA.match(u))]
    if spiffe:
        return PeerIdentity(tuple(spiffe), "spiffe",
                            ", ".join(u for u in uris if _SPIFFE_SA.match(u)))
    if dns:
        return PeerIdentity(tuple(dns), "dns", "DNS:" + ",".join(dns))
    if cns:
        return PeerIdentity(tuple(cns), "cn", "CN=" + ",".join(cns))
    return PeerIdentity((), "none", "no client certificate")


class IdentityCheck:
    """The `authorize` hook of `XdsServer`: None lets a stream through, a string refuses it."""

    def __init__(self, mode: str = "strict"):
        if mode not in IDENTITY_CHECKS:
            raise XdsSecurityError(f"identity check must be one of {', '.join(IDENTITY_CHECKS)}")
        self.mode = mode

    def __call__(self, node: Any, view: str, context: Any) -> str | None:
        if self.mode == "off":
            return None
        identity = peer_identity(context.auth_context())
        if view in identity.names:
            return None
        if not identity.names:
            return f"view {view!r} needs a client certificate proving it; none was presented"
        return (f"view {view!r} is not the identity the client certificate proves "
                f"({identity}: may ask for {', '.join(repr(n) for n in identity.names)})")


def make_authorize(mode: str) -> Callable[[Any, str, Any], str | None] | None:
    return IdentityCheck(mode) if mode != "off" else None


def _bearer_of(context: Any) -> str | None:
    """The token of the call's `authorization: Bearer ...` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class NodeTokenCheck:
    """The `authorize` hook of `XdsServer` for token-authenticated xDS (the default): the stream
    must carry `authorization: Bearer TOKEN` metadata (Envoy's bootstrap sends it as the
    `initial_metadata` of its xDS gRPC service), a node token whose subject is the node's view.

    `verify(token)` returns the view a node token grants, or raises ValueError saying why not
    (meshpilot.ca.tokens, given by the runtime: xds/ knows no keys)."""

    def __init__(self, verify: Callable[[str], str]):
        self.verify = verify

    def __call__(self, node: Any, view: str, context: Any) -> str | None:
        token = _bearer_of(context)
        if token is None:
            return (f"view {view!r} needs a node token (authorization: Bearer metadata; "
                    f"`meshpilot bootstrap` writes it); none was sent")
        try:
            granted = self.verify(token)
        except ValueError as e:
            return f"node token refused: {e}"
        if granted != view:
            return f"the node token is for view {granted!r}, not {view!r}"
        return None


class OperatorCheck:
    """Who may call CSDS, which shows every node's configuration: a caller with an operator
    token (`meshpilot token create operator`). `verify(token)` raises ValueError if the token
    is not a valid operator token."""

    def __init__(self, verify: Callable[[str], object]):
        self.verify = verify

    def __call__(self, context: Any) -> str | None:
        token = _bearer_of(context)
        if token is None:
            return "CSDS needs an operator token (authorization: Bearer metadata)"
        try:
            self.verify(token)
        except ValueError as e:
            return f"operator token refused: {e}"
        return None


def is_loopback(host: str) -> bool:
    """Whether a bind address keeps a port on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class IssuedServerCertificate:
    """meshpilot's own xDS serving certificate (issued from the mesh CA, not read from files),
    replaceable while serving: after `replace`, the next TLS handshake uses the new one
    (a root rotation re-issues it). Established streams keep theirs."""

    def __init__(self, private_key: bytes, certificate_chain: bytes):
        self._lock = threading.Lock()
        self._initial = grpc.ssl_server_certificate_configuration(
            [(private_key, certificate_chain)])
        self._pending: Any = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._initial, self._fetch,
                                                   require_client_authentication=False)

    def replace(self, private_key: bytes, certificate_chain: bytes) -> None:
        config = grpc.ssl_server_certificate_configuration([(private_key, certificate_chain)])
        with self._lock:
            self._pending = config

    def _fetch(self) -> Any:
        """Called by gRPC at every handshake: None keeps the current configuration."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

"""A root CA (EC P-256) and pure issuance of SPIFFE X.509 workload certificates.

The root is created on first start into a CA directory (`ca.crt`, and `ca.key` written with mode
0600 in a 0700 directory) or loaded from it when both files exist, so replicas and restarts that
share the directory share the trust bundle. Without a directory the root lives in memory only.

A workload certificate (an X509-SVID) has exactly one URI SAN, the SPIFFE ID
`spiffe://<trust domain>/ns/<namespace>/sa/<name>`, is good for client and server auth, and is
valid from `now - BACKDATE` (clock skew between hosts) to `now + ttl`. `issue` takes the time as
a parameter: nothing here reads a clock. Private keys are kept out of repr() and never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("meshpilot.ca")

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_NAMESPACE = "default"
ROOT_CERT = "ca.crt"
ROOT_KEY = "ca.key"
ROOT_VALIDITY = dt.timedelta(days=3650)
BACKDATE = dt.timedelta(seconds=30)  # tolerated clock skew between meshpilot and the Envoys

class CaError(ValueError):
    """The CA directory or a setting of the CA cannot be used (shown to the user)."""


_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


def check_trust_domain(value: str) -> str:
    """A SPIFFE trust domain: lower-case letters, digits, dots, dashes and underscores."""
    if not _TRUST_DOMAIN.match(value):
        raise CaError(f"invalid trust domain {value!r}: use lower-case letters, digits, "
                         "'.', '-' and '_' (such as cluster.local)")
    return value


def spiffe_id(trust_domain: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """`spiffe://<trust domain>/ns/<namespace>/sa/<name>` (Istio's form)."""
    for part in (namespace, name):
        if not _SEGMENT.match(part):
            raise ValueError(f"invalid SPIFFE path segment {part!r}")
    return f"spiffe://{check_trust_domain(trust_domain)}/ns/{namespace}/sa/{name}"


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    spiffe_id: str
    serial: int
    not_before: float  # POSIX seconds
    not_after: float
    issued_at: float  # the `now` it was issued at: renewal is due at issued_at + ttl / 2
    certificate_chain: bytes  # PEM: the workload certificate (the root is the trust bundle)
    private_key: bytes = field(repr=False)  # PEM (PKCS#8); never logged, redacted in dumps
    root: str = ""  # the fingerprint of the root that signed it (`fingerprint`)

    @property
    def renew_at(self) -> float:
        return self.issued_at + (self.not_after - self.issued_at) / 2


def fingerprint(certificate: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER bytes (what `openssl x509 -fingerprint -sha256`
    prints, without the colons)."""
    return "sha256:" + certificate.fingerprint(hashes.SHA256()).hex()


class CertificateAuthority:
    """The root that signs, and the trust bundle: that root first, then `trusted` (other roots
    Envoys must accept too, during a root rotation: ca/rotation.py)."""

    def __init__(self, root_key: ec.EllipticCurvePrivateKey, root_cert: x509.Certificate,
                 trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 trusted: tuple[x509.Certificate, ...] = ()):
        self.trust_domain = check_trust_domain(trust_domain)
        self._key = root_key
        self.root = root_cert
        self.root_fingerprint = fingerprint(root_cert)
        self.trusted = tuple(c for c in trusted if fingerprint(c) != self.root_fingerprint)
        self.trust_bundle: bytes = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (root_cert, *self.trusted))

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.root.subject.rfc4514_string()!r})"

    # ---- the root -------------------------------------------------------------------------

    @classmethod
    def create(cls, trust_domain: str = DEFAULT_TRUST_DOMAIN,
               now: dt.datetime | None = None, label: str | None = None,
               validity: dt.timedelta = ROOT_VALIDITY) -> CertificateAuthority:
        """A new root in memory. `label` (a root made by a rotation) goes into the subject as
        its organizational unit, so two roots of one trust domain have different names."""
        now = now or dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        common_name = f"meshpilot root CA {check_trust_domain(trust_domain)}"
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshpilot")]
        if label:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, label))
        name = x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        public = key.public_key()
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name).public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE).not_valid_after(now + validity)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(key, cert, trust_domain)

    def key_pem(self) -> bytes:
        """The root's private key, PEM (PKCS#8): for the CA folder only, never a log."""
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def with_trusted(self, trusted: tuple[x509.Certificate, ...]) -> CertificateAuthority:
        """The same signing root with another set of further trusted roots."""
        return CertificateAuthority(self._key, self.root, self.trust_domain, trusted)

    @classmethod
    def load_or_create(cls, directory: str | Path | None,
                       trust_domain: str = DEFAULT_TRUST_DOMAIN) -> CertificateAuthority:
        """The root in `directory` (`ca.crt` + `ca.key`), created there on first start; None:
        a root in memory (lost on restart, not shared between replicas)."""
        if directory is None:
            log.info("no --ca-dir: the mesh CA root lives in memory; workload certificates "
                        "will not verify across restarts or replicas")
            return cls.create(trust_domain)
        folder = Path(directory)
        cert_path, key_path = folder / ROOT_CERT, folder / ROOT_KEY
        if cert_path.exists() or key_path.exists():
            return cls.load(folder, trust_domain)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = cls.create(trust_domain)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(ca.key_pem())
        cert_path.write_bytes(ca.trust_bundle)
        log.info("mesh CA root created in %s (trust domain %s)", folder, trust_domain)
        return ca

    @classmethod
    def load(cls, folder: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> CertificateAuthority:
        """`ca.key` and `ca.crt`: the certificate of that key signs, every other certificate in
        `ca.crt` is trusted besides (a bundle written during a root rotation)."""
        cert_path, key_path = folder / ROOT_CERT, folder / ROOT_KEY
        try:
            certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise CaError(f"cannot load the mesh CA from {folder}: {type(e).__name__}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{key_path}: expected an EC private key")
        public = key.public_key().public_numbers()
        own = [c for c in certs if isinstance(c.public_key(), ec.EllipticCurvePublicKey)
               and c.public_key().public_numbers() == public]  # type: ignore[union-attr]
        if not own:
            raise CaError(f"{key_path} is not the key of {cert_path}")
        if key_path.stat().st_mode & 0o077:
            log.warning("%s is readable by others (mode %o): chmod 600 it", key_path,
                        key_path.stat().st_mode & 0o777)
        return cls(key, own[0], trust_domain, tuple(c for c in certs if c is not own[0]))

    # ---- the control plane's own serving certificate -----------------------------------------

    def issue_server(self, dns_names: list[str], ip_addresses: list[str], now: float,
                     ttl: float) -> WorkloadCertificate:
        """A key and a TLS server certificate for meshpilot's own xDS port: DNS and IP SANs, no
        SPIFFE ID (it is no workload), server authentication only. Envoys trust it through
        the CA root (`ca.crt`) their bootstrap names."""
        if not dns_names and not ip_addresses:
            raise ValueError("a server certificate needs at least one name or address")
        if ttl <= 0:
            raise ValueError("the certificate TTL must be positive")
        key = ec.generate_private_key(ec.SECP256R1())
        start = dt.datetime.fromtimestamp(now, dt.UTC)
        not_before, not_after = start - BACKDATE, start + dt.timedelta(seconds=ttl)
        serial = x509.random_serial_number()
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshpilot"),
                    x509.NameAttribute(NameOID.COMMON_NAME, (dns_names or ip_addresses)[0])]))
                .issuer_name(self.root.subject).public_key(key.public_key())
                .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256()))
        return WorkloadCertificate(
            spiffe_id="", serial=serial, not_before=not_before.timestamp(),
            not_after=not_after.timestamp(), issued_at=now,
            certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
            private_key=key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
            root=self.root_fingerprint)

    # ---- workload certificates -------------------------------------------------------------

    def spiffe_id(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> str:
        return spiffe_id(self.trust_domain, name, namespace)

    def issue(self, identity: str, now: float, ttl: float) -> WorkloadCertificate:
        """A new key and certificate for the SPIFFE ID `identity`, valid for `ttl` seconds from
        `now` (POSIX seconds). Pure but for the randomness of the key and serial."""
        if not identity.startswith(f"spiffe://{self.trust_domain}/"):
            raise ValueError(f"{identity!r} is not in trust domain {self.trust_domain}")
        if ttl <= 0:
            raise ValueError("the certificate TTL must be positive")
        key = ec.generate_private_key(ec.SECP256R1())
        start = dt.datetime.fromtimestamp(now, dt.UTC)
        not_before = start - BACKDATE
        not_after = start + dt.timedelta(seconds=ttl)
        serial = x509.random_serial_number()
        name = identity.rsplit("/", 1)[-1]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshpilot"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.root.subject).public_key(key.public_key())
                .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(identity)]), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256()))
        return WorkloadCertificate(
            spiffe_id=identity, serial=serial, not_before=not_before.timestamp(),
            not_after=not_after.timestamp(), issued_at=now,
            certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
            private_key=key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
            root=self.root_fingerprint)

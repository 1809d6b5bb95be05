"""Certificate and key files: read, checked, and remembered for the watcher.

The policy names TLS material by file path (`tls: {certificates: [{cert: ..., key: ...}]}` on a
Gateway listener, `tls: {ca: ...}` on a Service). The loader reads those files through this
module while it loads a policy, so a file that is missing, unreadable, not PEM, or a key that does
not belong to its certificate is a policy error at the field that names it, and the last good
config keeps serving. The bytes go into the model; the translators deliver them to Envoy as SDS
`Secret`s, never inlined in a listener or cluster.

Every file read during a load is recorded (`recording()`), even when the load fails, so the
watcher can also watch those files: replacing a certificate reloads the policy, which changes
only the Secret, so only SDS is pushed and Envoy swaps the certificate without a restart.

Messages never include file contents: a private key must not reach a log line.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

MAX_FILE_BYTES = 1 << 20  # a certificate chain or key is a few kB; refuse to slurp a disk image

_recorded: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "meshpilot_tls_files", default=None)
# The policy folder of the load in progress: relative paths are resolved against it.
_base: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "meshpilot_tls_base", default=None)
# The folders (resolved) the load in progress may read files from; None: not confined.
_roots: contextvars.ContextVar[tuple[Path, ...] | None] = contextvars.ContextVar(
    "meshpilot_file_roots", default=None)


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a certificate says about itself (the first of a chain), for messages and tests."""

    names: tuple[str, ...]  # DNS subject alternative names, or the common name if none
    serial: int
    fingerprint: str  # SHA-256 of the DER certificate, hex


@contextmanager
def recording() -> Iterator[set[str]]:
    """Collect the absolute paths of every TLS file read in this context (a load)."""
    files: set[str] = set()
    token = _recorded.set(files)
    try:
        yield files
    finally:
        _recorded.reset(token)


@contextmanager
def paths_relative_to(folder: Path, allowed: Iterable[Path] = ()) -> Iterator[None]:
    """Resolve relative paths read in this context (a load) against `folder`: the policy folder,
    so `cert: certs/edge.pem` means the same file whatever directory meshpilot was started in.

    And confine them: a file the policy names must be inside `folder` or one of the `allowed`
    folders (`--allow-files-from`), after following symbolic links, or reading it is an error
    (`confined`). Otherwise a policy edit could make meshpilot read, and push to Envoys, any
    file it can read: its own CA key, another tenant's certificates, /etc/shadow."""
    token = _base.set(folder)
    roots = _roots.set((folder.resolve(), *(Path(p).resolve() for p in allowed)))
    try:
        yield
    finally:
        _roots.reset(roots)
        _base.reset(token)


def confined(path: Path, shown: str) -> Path:
    """`path` if the load may read it (see `paths_relative_to`); FileOutsideError if not.
    Outside a load (a tool reading a file it was given), nothing is confined."""
    roots = _roots.get()
    if roots is None:
        return path
    real = path.resolve()  # a link inside the folder that points outside it is outside
    if any(real.is_relative_to(root) for root in roots):
        return path
    where = "the policy folder" + (" or the folders of --allow-files-from" if len(roots) > 1
                                   else " (--allow-files-from DIR allows another folder)")
    raise FileOutsideError(f"{shown} is outside {where}: meshpilot reads no file elsewhere")


class FileOutsideError(ValueError):
    """A file reference outside the folders a load may read; the message is safe to show."""


def resolve(path: str) -> Path:
    """A path as written in the policy: absolute (`~` expanded), or relative to the policy
    folder being loaded (outside a load: to the working directory)."""
    written = Path(path).expanduser()
    base = _base.get()
    if not written.is_absolute() and base is not None:
        written = base / written
    return written.absolute()


def _read(path: str, what: str) -> bytes:
    resolved = resolve(path)
    try:
        confined(resolved, f"{what} file {path}")
    except FileOutsideError as outside:
        raise TlsFileError(str(outside)) from None
    recorded = _recorded.get()
    if recorded is not None:
        recorded.add(str(resolved))
    try:
        with resolved.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise TlsFileError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise TlsFileError(f"{what} file {path} is a directory") from None
    except OSError as error:
        raise TlsFileError(f"cannot read {what} file {path}: "
                           f"{error.strerror or type(error).__name__}") from None
    if len(data) > MAX_FILE_BYTES:
        raise TlsFileError(f"{what} file {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _certificates(data: bytes, path: str, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TlsFileError(f"{what} file {path} holds no PEM certificate "
                           "(-----BEGIN CERTIFICATE-----)")
    return certificates


def read_certificate(cert_path: str, key_path: str) -> tuple[bytes, bytes, CertificateInfo]:
    """(certificate chain PEM, private key PEM, info) of a certificate and its key.

    Raises `TlsFileError` with `field` "cert" or "key" saying which of the two is wrong.
    """
    cert_data = _read_for("cert", cert_path, "certificate")
    key_data = _read_for("key", key_path, "private key")
    try:
        chain = _certificates(cert_data, cert_path, "certificate")
    except TlsFileError as error:
        raise FieldError("cert", str(error)) from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise FieldError("key", f"private key file {key_path} is encrypted; Envoy needs an "
                                "unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise FieldError("key", f"private key file {key_path} holds no usable PEM private key "
                                "(-----BEGIN PRIVATE KEY-----)") from None
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise FieldError("cert", f"certificate {cert_path} does not match private key "
                                 f"{key_path} (the key belongs to another certificate)")
    return cert_data, key_data, info(leaf)


def read_ca(path: str) -> bytes:
    """The PEM of one or more CA certificates."""
    data = _read(path, "CA")
    _certificates(data, path, "CA")
    return data


class FieldError(TlsFileError):
    """A `TlsFileError` about one of two fields (`cert` or `key`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _read_for(field: str, path: str, what: str) -> bytes:
    try:
        return _read(path, what)
    except TlsFileError as error:
        raise FieldError(field, str(error)) from None


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def info(certificate: x509.Certificate) -> CertificateInfo:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(extension.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    if not names:
        names = tuple(str(attribute.value) for attribute in
                      certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    der = certificate.public_bytes(serialization.Encoding.DER)
    return CertificateInfo(names=names, serial=certificate.serial_number,
                           fingerprint=hashlib.sha256(der).hexdigest())


def pem_info(pem: bytes) -> CertificateInfo:
    """The info of the first certificate of a PEM chain."""
    return info(x509.load_pem_x509_certificates(pem)[0])

"""TLS material in Kubernetes Secret documents: a certificate and its key, and CA certificates.

What a Gateway API listener's `certificateRefs` and an Istio Gateway server's `credentialName`
name. The keys are Kubernetes' own for `kubernetes.io/tls` Secrets (`tls.crt`, `tls.key`, and
`ca.crt` for a client CA), or, with `generic=True`, an Opaque Secret with those keys or the
others Istio reads (`cert`, `key`, `cacert`); values in `data` (base64) or `stringData`.
"""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshpilot.inputs.gatewayapi.kinds import KubeObject
from meshpilot.inputs.yamlsource import format_path
from meshpilot.ir.model import Origin, TlsCertificate

TLS_TYPE = "kubernetes.io/tls"
_TLS_KEYS = ("tls.crt", "tls.key", "ca.crt")
_GENERIC_KEYS = ("cert", "key", "cacert")


def _value(secret: KubeObject, key: str) -> bytes | None:
    """The Secret's `key`, decoded; None when it has none. Raises ValueError (not base64)."""
    data = secret.body.get("data") or {}
    if key in data:
        return base64.b64decode(data[key], validate=True)
    text = (secret.body.get("stringData") or {}).get(key)
    return None if text is None else text.encode()


def _keys(secret: KubeObject, generic: bool) -> tuple[str, str, str] | None:
    if secret.body.get("type") == TLS_TYPE:
        return _TLS_KEYS
    if generic and secret.body.get("type", "Opaque") == "Opaque":
        # Istio reads either set from an Opaque Secret (`kubectl create secret generic
        # --from-file=tls.crt=...`, as its Secure Gateways task does): cert and key first.
        written = {*(secret.body.get("data") or {}), *(secret.body.get("stringData") or {})}
        return _TLS_KEYS if {"tls.crt", "tls.key"} <= written and not \
            {"cert", "key"} <= written else _GENERIC_KEYS
    return None


def tls_secret(secret: KubeObject, *, generic: bool = False
               ) -> tuple[TlsCertificate | None, str]:
    """The certificate chain and key of a Secret, or None and why not."""
    keys = _keys(secret, generic)
    if keys is None:
        return None, (f"type must be {TLS_TYPE}" if not generic else
                      f"type must be {TLS_TYPE} (tls.crt, tls.key) or Opaque (cert, key)")
    cert_key, key_key, _ = keys
    try:
        cert = _value(secret, cert_key) or b""
        key = _value(secret, key_key) or b""
    except (binascii.Error, ValueError):
        return None, f"{cert_key} or {key_key} is not base64"
    try:
        chain = x509.load_pem_x509_certificates(cert)
    except ValueError:
        return None, f"{cert_key} holds no PEM certificate"
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (TypeError, ValueError):
        return None, f"{key_key} holds no unencrypted PEM private key"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(der, spki) != \
            private.public_key().public_bytes(der, spki):
        return None, f"{cert_key} does not match {key_key}"
    where = f"secret:{secret.key}"
    origin = Origin(secret.document.position_of(("data",)), secret.kind, secret.key,
                    format_path(("data",)))
    return TlsCertificate(where, where, cert, key, position=secret.document.position,
                          origin=origin), ""


def ca_of(secret: KubeObject) -> tuple[bytes | None, str]:
    """The CA certificates (PEM) a Secret holds (`ca.crt`, or `cacert`), None when it holds
    none; a problem when what it holds is no certificate."""
    for key in ("ca.crt", "cacert"):
        try:
            pem = _value(secret, key)
        except (binascii.Error, ValueError):
            return None, f"{key} is not base64"
        if pem is None:
            continue
        try:
            x509.load_pem_x509_certificates(pem)
        except ValueError:
            return None, f"{key} holds no PEM certificate"
        return pem, ""
    return None, ""

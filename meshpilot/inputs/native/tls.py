"""TLS in policy documents: `tls` on a Gateway listener (termination) and on a Service
(origination), as `model.ListenerTls` and `model.UpstreamTls`.

The files named here are read now, while the policy loads (`base/tlsfiles.py`): a missing or
unreadable file, a file that holds no PEM certificate, or a key that does not belong to its
certificate is reported at the field naming it, and the load is refused. Paths are absolute or
relative to the policy folder (meshpilot.base.tlsfiles.resolve).

Shapes:

    # a Gateway listener
    - name: https
      port: 8443
      protocol: https
      tls:
        certificates:                  # one or more; Envoy picks by SNI against their SANs,
          - {cert: /etc/tls/a.pem, key: /etc/tls/a.key}   # the first when none matches
        min_version: "1.3"             # "1.2" (Envoy's default) | "1.3"
        alpn: [h2, http/1.1]           # default
    - {name: http, port: 8080, redirect_to_https: 8443}   # or true (port 443)

    # a Service
    tls: {sni: api.internal, ca: /etc/tls/internal-ca.pem, verify: true}
                                       # verify (default true) needs ca; false: any certificate
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal, cast

from meshpilot.base import tlsfiles as tls_files
from meshpilot.inputs.native import fields
from meshpilot.inputs.native.fields import Fields, Invalid, convert_at, written_before
from meshpilot.inputs.yamlsource import FieldPath
from meshpilot.ir.model import ListenerTls, TlsCertificate, UpstreamTls

TLS_KEYS = ("certificates", "min_version", "alpn")
CERTIFICATE_KEYS = ("cert", "key")
TLS_VERSIONS = ("1.2", "1.3")
ALPN_PROTOCOLS = ("h2", "http/1.1")
UPSTREAM_TLS_KEYS = ("sni", "ca", "verify")
HTTPS_PORT = 443

_TLS_VERSION = fields.choice(TLS_VERSIONS)
_ALPN = fields.choice(ALPN_PROTOCOLS)


def listener_tls(entry: Fields, protocol: str) -> tuple[ListenerTls | None, int | None]:
    """`tls` (protocol https only, and required there) and `redirect_to_https` (plain http)."""
    redirect = entry.get("redirect_to_https", _redirect_port)
    if protocol == "https" and "redirect_to_https" in entry.value:
        entry.report("redirect_to_https", "redirect_to_https is for plain http listeners; this "
                                          "one already speaks https", at_value=False)
    if protocol != "https":
        if "tls" in entry.value:
            entry.report("tls", 'tls needs "protocol: https" on this listener', at_value=False)
        return None, redirect
    settings = entry.mapping("tls", "a mapping such as {certificates: [{cert: /etc/tls/a.pem, "
                                    "key: /etc/tls/a.key}]}", required=True)
    if settings is None:
        return None, None
    settings.check_keys(TLS_KEYS, "tls")
    certificates = _certificates(settings)
    min_version = settings.get("min_version", _tls_version)
    alpn = _alpn(settings)
    if not certificates:
        return None, None
    return ListenerTls(certificates=certificates,
                       min_version=cast(Literal["1.2", "1.3"] | None, min_version),
                       alpn=alpn or ("h2", "http/1.1"), origin=settings.origin()), None


def _redirect_port(value: object) -> int:
    """`true`: https on the standard port 443; a number: https on that port."""
    if value is True:
        return HTTPS_PORT
    if isinstance(value, int) and not isinstance(value, bool):
        return fields.PORT(value)
    raise Invalid(f"expected true (https on port 443) or the https port, found "
                  f"{fields.describe(value) if value is not False else 'false'}")


def _tls_version(value: object) -> str:
    if isinstance(value, float):  # min_version: 1.3 without quotes
        raise Invalid(f'write the version in quotes: "{value}"')
    return _TLS_VERSION(value)


def _alpn(settings: Fields) -> tuple[str, ...]:
    items = settings.items("alpn", "protocol")
    found: list[str] = []
    for index, item in enumerate(items or ()):
        converted = convert_at(settings.ctx, item, (*settings.path, "alpn", index), _ALPN)
        if converted is None:
            continue
        if converted in found:
            settings.ctx.report((*settings.path, "alpn", index),
                                f"{fields.quoted(converted)} is listed twice", at_value=True)
            continue
        found.append(converted)
    return tuple(found)


def _certificates(settings: Fields) -> tuple[TlsCertificate, ...]:
    items = settings.items("certificates", "certificate", required=True)
    certificates: list[TlsCertificate] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items or ()):
        path = (*settings.path, "certificates", index)
        entry = Fields.at(settings.ctx, item, path,
                          "a mapping such as {cert: /etc/tls/a.pem, key: /etc/tls/a.key}")
        if entry is None:
            continue
        entry.check_keys(CERTIFICATE_KEYS, "a certificate")
        cert_path = entry.get("cert", _file_path, required=True)
        key_path = entry.get("key", _file_path, required=True)
        if cert_path is None or key_path is None:
            continue
        first = written_before(settings.ctx, seen, cert_path, (*path, "cert"))
        if first is not None:
            entry.report("cert", f"certificate {cert_path} is listed twice (first at {first})")
            continue
        try:
            chain, key, _ = tls_files.read_certificate(cert_path, key_path)
        except tls_files.FieldError as problem:
            entry.report(problem.field, str(problem))
            continue
        certificates.append(TlsCertificate(
            cert_path=cert_path, key_path=key_path, certificate_chain=chain, private_key=key,
            position=settings.ctx.document.value_position_of((*path, "cert")),
            origin=entry.origin()))
    return tuple(certificates)


def _file_path(value: object) -> str:
    text = fields.string(value)
    if not text.isprintable() or "\x00" in text:
        raise Invalid(f"invalid path {fields.quoted(text)}")
    return text


def upstream_tls(doc: Fields) -> UpstreamTls | None:
    """A Service's `tls`: Envoy connects to its endpoints over TLS."""
    settings = doc.mapping("tls", "a mapping such as {sni: api.internal, ca: /etc/tls/ca.pem}")
    if settings is None:
        return None
    settings.check_keys(UPSTREAM_TLS_KEYS, "tls")
    sni = settings.get("sni", fields.dns_name)
    verify = settings.get("verify", fields.boolean)
    verify = True if verify is None else verify
    ca_path = settings.get("ca", _file_path)
    ca = None
    if ca_path is not None:
        try:
            ca = tls_files.read_ca(ca_path)
        except tls_files.TlsFileError as problem:
            settings.report("ca", str(problem))
    elif verify and "ca" not in settings.value:
        settings.ctx.report((*settings.path, "ca"),
                            'missing "ca": verify needs the CA certificates that sign the '
                            "endpoints' certificates (or write verify: false)")
    return UpstreamTls(sni=sni, verify=verify, ca_path=ca_path, ca=ca if verify else None,
                       origin=settings.origin())

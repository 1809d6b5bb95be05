"""Secret values out of every dump: key material replaced by a fingerprint, in the message itself.

Everything meshpilot shows of a resource (CSDS, `/debug/config_dump`, `meshpilot render`) goes
through `redacted()`: a copy of the resource's message in which each secret value (TLS private
keys and their passwords, session ticket keys, generic secrets, HMAC secrets, API keys, basic
auth's password hashes, the secret members of JWT key sets) is replaced by
`[redacted sha256:<16 hex>]`. The result is still a valid message of the same type, so CSDS can
return it as it returns any resource, and a changed secret still shows as a changed fingerprint.

The fingerprint is the first 64 bits of SHA-256 of the value: enough to tell two values apart,
nothing to recover a key from. It is not salted, so that two replicas, or two runs of
`meshpilot render`, show the same fingerprint for the same value; a low-entropy secret (a short
API key) could be guessed from it offline, which is why the dumps that show it need an operator
credential (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json

from google.protobuf import symbol_database
from google.protobuf.message import Message

from meshpilot.xds.deps import is_repeated

MARKER = "[redacted"  # every redacted value starts with this

# Fields whose value is secret wherever they appear: a DataSource (its inline bytes or string are
# replaced, a file path or environment variable name is not secret and stays), or a string.
SECRET_FIELDS = frozenset({
    "private_key", "password",  # TlsCertificate
    "keys",  # TlsSessionTicketKeys
    "secret", "secrets",  # GenericSecret
    "hmac_secret", "token_secret",  # OAuth2 and HMAC credentials
    "users",  # basic_auth: the htpasswd lines (password hashes)
})
# jwt_authn's inline key sets: public keys stay readable, secret members are replaced.
_JWKS_FIELD = "local_jwks"
# JWK members that are secret (RFC 7518 section 6): a symmetric key, and an RSA or EC private key.
_SECRET_JWK_MEMBERS = ("k", "d", "p", "q", "dp", "dq", "qi", "oth")
# Secret fields of one message type only: the name alone would be too broad.
SECRET_FIELDS_OF = {
    "envoy.extensions.filters.http.api_key_auth.v3.Credential": frozenset({"key"}),
}
# What a gRPC service sends with every call (GrpcService.initial_metadata): a node token, an
# API key. A HeaderValue elsewhere (a header added to requests) is policy, shown as written.
_SECRET_HEADER_LISTS = frozenset({"initial_metadata"})
_DATA_SOURCE = "envoy.config.core.v3.DataSource"


def fingerprint(value: bytes | str) -> str:
    data = value.encode() if isinstance(value, str) else value
    return f"{MARKER} sha256:{hashlib.sha256(data).hexdigest()[:16]}]"


def redacted(message: Message) -> Message:
    """A copy of `message` with every secret value replaced by its fingerprint."""
    copy = type(message)()
    copy.CopyFrom(message)
    _redact(copy)
    return copy


def _redact(message: Message) -> None:
    full_name = message.DESCRIPTOR.full_name
    if full_name == "google.protobuf.Any":
        _redact_any(message)
        return
    secret_here = SECRET_FIELDS | SECRET_FIELDS_OF.get(full_name, frozenset())
    for field, value in message.ListFields():
        secret = field.name in secret_here
        if field.message_type is None:
            if secret and field.type == field.TYPE_STRING:
                if is_repeated(field):
                    replaced = [fingerprint(item) for item in value]
                    del value[:]
                    value.extend(replaced)
                else:
                    setattr(message, field.name, fingerprint(value))
            elif secret and field.type == field.TYPE_BYTES:
                setattr(message, field.name, fingerprint(value).encode())
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is None:
                if secret:
                    for key in list(value):
                        value[key] = fingerprint(value[key])
                continue
            items = list(value.values())
        elif is_repeated(field):
            items = list(value)
        else:
            items = [value]
        for item in items:
            if field.name in _SECRET_HEADER_LISTS:
                for name in ("value", "raw_value"):
                    if getattr(item, name, None):
                        setattr(item, name, fingerprint(getattr(item, name))
                                if name == "value" else fingerprint(item.raw_value).encode())
            elif field.name == _JWKS_FIELD and item.DESCRIPTOR.full_name == _DATA_SOURCE:
                _redact_jwks(item)
            elif secret and item.DESCRIPTOR.full_name == _DATA_SOURCE:
                _redact_data_source(item)
            else:
                _redact(item)


def _redact_data_source(source: Message) -> None:
    kind = source.WhichOneof("specifier")
    if kind in ("inline_bytes", "inline_string"):
        source.inline_string = fingerprint(getattr(source, kind))


def _redact_jwks(source: Message) -> None:
    """A JSON Web Key Set with its secret members replaced; anything that is not a readable key
    set is replaced whole (it might be a key in some other form)."""
    kind = source.WhichOneof("specifier")
    if kind not in ("inline_bytes", "inline_string"):
        return
    raw = getattr(source, kind)
    try:
        jwks = json.loads(raw)
        keys = jwks["keys"]
        if not isinstance(keys, list) or not all(isinstance(key, dict) for key in keys):
            raise TypeError("keys is not a list of objects")
    except (ValueError, TypeError, KeyError):
        source.inline_string = fingerprint(raw)
        return
    if not any(member in key for key in keys for member in _SECRET_JWK_MEMBERS):
        return  # public keys only: nothing to hide, and the dump stays byte-for-byte the input
    for key in keys:
        for member in _SECRET_JWK_MEMBERS:
            if member in key:
                key[member] = fingerprint(json.dumps(key[member]))
    source.inline_string = json.dumps(jwks)


def _redact_any(packed: Message) -> None:
    try:
        inner = symbol_database.Default().GetSymbol(packed.TypeName())()  # type: ignore[attr-defined]
    except KeyError:
        packed.value = b""  # a type we cannot read: show nothing of it rather than its bytes
        return
    packed.Unpack(inner)  # type: ignore[attr-defined]
    _redact(inner)
    packed.Pack(inner)  # type: ignore[attr-defined]

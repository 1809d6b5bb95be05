"""xds/redact.py: every kind of secret value becomes a fingerprint, in a message that is still
of its own type; public parts (certificates, public JWT keys, file paths) stay readable."""

from __future__ import annotations

import json
import re

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2
from envoy.extensions.filters.http.basic_auth.v3 import basic_auth_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from google.protobuf import any_pb2

from meshpilot.xds.redact import MARKER, fingerprint, redacted


def test_fingerprints_are_stable_distinct_and_short() -> None:
    assert fingerprint(b"key-a") == fingerprint("key-a")
    assert fingerprint("key-a") != fingerprint("key-b")
    assert fingerprint("key-a").startswith(MARKER)
    assert re.fullmatch(r"\[redacted sha256:[0-9a-f]{16}\]", fingerprint("key-a"))


def test_tls_private_key_and_password_become_fingerprints_the_chain_stays() -> None:
    secret = secret_pb2.Secret(name="s", tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_string="CHAIN"),
        private_key=base_pb2.DataSource(inline_bytes=b"PRIVATE"),
        password=base_pb2.DataSource(inline_string="PASSWORD")))
    out = redacted(secret)
    assert isinstance(out, secret_pb2.Secret)
    assert out.tls_certificate.certificate_chain.inline_string == "CHAIN"
    assert out.tls_certificate.private_key.inline_string == fingerprint(b"PRIVATE")
    assert out.tls_certificate.password.inline_string == fingerprint("PASSWORD")
    assert secret.tls_certificate.private_key.inline_bytes == b"PRIVATE"  # the input is untouched


def test_a_key_named_by_file_is_not_secret() -> None:
    secret = secret_pb2.Secret(tls_certificate=common_pb2.TlsCertificate(
        private_key=base_pb2.DataSource(filename="/etc/key.pem")))
    assert redacted(secret).tls_certificate.private_key.filename == "/etc/key.pem"


def test_session_ticket_keys_and_generic_secrets() -> None:
    tickets = secret_pb2.Secret(session_ticket_keys=common_pb2.TlsSessionTicketKeys(
        keys=[base_pb2.DataSource(inline_bytes=b"T1"), base_pb2.DataSource(inline_bytes=b"T2")]))
    assert [k.inline_string for k in redacted(tickets).session_ticket_keys.keys] == [
        fingerprint(b"T1"), fingerprint(b"T2")]
    generic = secret_pb2.Secret(generic_secret=secret_pb2.GenericSecret(
        secret=base_pb2.DataSource(inline_string="G"),
        secrets={"x": base_pb2.DataSource(inline_string="H")}))
    out = redacted(generic).generic_secret
    assert out.secret.inline_string == fingerprint("G")
    assert out.secrets["x"].inline_string == fingerprint("H")


def _inside_a_listener_filter(config: object) -> any_pb2.Any:
    """`config` packed as an HTTP filter of a connection manager, itself packed in an Any."""
    manager = hcm_pb2.HttpConnectionManager(http_filters=[
        hcm_pb2.HttpFilter(name="f", typed_config=_pack(config))])
    return _pack(manager)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _unpacked_filter(packed: any_pb2.Any, cls: type) -> object:
    manager = hcm_pb2.HttpConnectionManager()
    packed.Unpack(manager)
    inner = cls()
    manager.http_filters[0].typed_config.Unpack(inner)
    return inner


def test_api_keys_and_basic_auth_hashes_inside_nested_anys() -> None:
    keys = api_key_auth_pb2.ApiKeyAuth(credentials=[
        api_key_auth_pb2.Credential(key="the-key", client="client-a")])
    out = _unpacked_filter(redacted(_inside_a_listener_filter(keys)), api_key_auth_pb2.ApiKeyAuth)
    assert out.credentials[0].key == fingerprint("the-key")
    assert out.credentials[0].client == "client-a"
    users = basic_auth_pb2.BasicAuth(users=base_pb2.DataSource(inline_string="u:{SHA}hash"))
    out = _unpacked_filter(redacted(_inside_a_listener_filter(users)), basic_auth_pb2.BasicAuth)
    assert out.users.inline_string == fingerprint("u:{SHA}hash")


def _provider(jwks: str) -> jwt_pb2.JwtAuthentication:
    return jwt_pb2.JwtAuthentication(providers={"p": jwt_pb2.JwtProvider(
        issuer="i", local_jwks=base_pb2.DataSource(inline_string=jwks))})


def test_jwks_secret_members_go_public_keys_stay() -> None:
    public = json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "n": "NNN", "e": "AQAB"}]})
    assert redacted(_provider(public)).providers["p"].local_jwks.inline_string == public
    mixed = json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": "SHARED"},
                                 {"kty": "RSA", "kid": "r", "n": "NNN", "e": "AQAB", "d": "PRIV"}]})
    out = json.loads(redacted(_provider(mixed)).providers["p"].local_jwks.inline_string)
    assert out["keys"][0] == {"kty": "oct", "kid": "h", "k": fingerprint('"SHARED"')}
    assert out["keys"][1]["n"] == "NNN" and out["keys"][1]["d"] == fingerprint('"PRIV"')
    # Not a key set we can read: replaced whole.
    assert redacted(_provider("not json")).providers["p"].local_jwks.inline_string == \
        fingerprint("not json")


def test_an_any_of_an_unknown_type_shows_nothing() -> None:
    unknown = any_pb2.Any(type_url="type.googleapis.com/no.such.Type", value=b"SECRET")
    assert redacted(unknown).value == b""


def test_grpc_metadata_is_secret_other_headers_are_policy() -> None:
    from envoy.config.core.v3 import grpc_service_pb2

    service = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name="meshpilot_xds"),
        initial_metadata=[base_pb2.HeaderValue(key="authorization", value="Bearer NODE-TOKEN")])
    out = redacted(service)
    assert out.initial_metadata[0].key == "authorization"
    assert out.initial_metadata[0].value == fingerprint("Bearer NODE-TOKEN")
    added = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-team", value="blue"))
    assert redacted(added).header.value == "blue"

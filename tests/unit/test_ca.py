"""The mesh CA (meshpilot/ca/) and what the translators make of its certificates: issuance,
the rotation schedule with a fake clock, the scoping of identity Secrets per view, redaction,
and the `sidecar.mtls` / `sidecar.authorization` language (docs/security.md)."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.ca import CaError, CertificateAuthority, WorkloadIdentities, spiffe_id
from meshpilot.inputs.loader import load_policy
from meshpilot.translators import Translation, mtls
from meshpilot.xds.redact import fingerprint
from meshpilot.xds.render import snapshot_to_dict

NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("example.org")


def _uris(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier)


# ---- issuance -------------------------------------------------------------------------------


def test_spiffe_ids() -> None:
    assert spiffe_id("cluster.local", "reviews") == "spiffe://cluster.local/ns/default/sa/reviews"
    assert spiffe_id("example.org", "a", "shop") == "spiffe://example.org/ns/shop/sa/a"
    with pytest.raises(CaError):
        spiffe_id("Bad Domain", "a")


def test_workload_certificate_san_validity_and_chain(ca: CertificateAuthority) -> None:
    issued = ca.issue(ca.spiffe_id("reviews"), NOW, 3600)
    cert = x509.load_pem_x509_certificate(issued.certificate_chain)
    assert _uris(cert) == ["spiffe://example.org/ns/default/sa/reviews"]
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert cert.not_valid_after_utc == dt.datetime.fromtimestamp(NOW + 3600, dt.UTC)
    assert cert.not_valid_before_utc <= dt.datetime.fromtimestamp(NOW, dt.UTC)
    assert issued.renew_at == NOW + 1800
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    # The chain verifies: signed by the root, which is a CA.
    cert.verify_directly_issued_by(ca.root)
    assert ca.root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.serial == cert.serial_number
    assert "PRIVATE" not in repr(issued) and "PRIVATE KEY" in issued.private_key.decode()


def test_issue_refuses_another_trust_domain_and_zero_ttl(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError):
        ca.issue("spiffe://cluster.local/ns/default/sa/x", NOW, 60)
    with pytest.raises(ValueError):
        ca.issue(ca.spiffe_id("x"), NOW, 0)


def test_root_created_once_into_the_directory_then_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    first = CertificateAuthority.load_or_create(folder)
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    second = CertificateAuthority.load_or_create(folder)
    assert second.trust_bundle == first.trust_bundle
    # A certificate issued by one verifies against the other's bundle (restarts, replicas).
    leaf = x509.load_pem_x509_certificate(second.issue(second.spiffe_id("a"), NOW, 60)
                                          .certificate_chain)
    leaf.verify_directly_issued_by(first.root)
    (folder / "ca.key").write_text("garbage")
    with pytest.raises(CaError, match="cannot load"):
        CertificateAuthority.load_or_create(folder)


# ---- rotation schedule (fake clock) ---------------------------------------------------------


def test_rotation_at_half_life_with_a_fake_clock(ca: CertificateAuthority) -> None:
    clock = Clock()
    identities = WorkloadIdentities(ca, ttl=4, clock=clock)
    assert identities.next_renewal() is None
    first = identities.certificate("b")
    assert identities.certificate("b") is first  # issued once, then reused
    assert identities.next_renewal() == NOW + 2
    clock.now = NOW + 1.9
    assert identities.renew_due() == set()
    clock.now = NOW + 2.0
    assert identities.renew_due() == {"b"}
    second = identities.certificate("b")
    assert second.serial != first.serial and second.issued_at == NOW + 2
    assert identities.next_renewal() == NOW + 4
    # An identity no view needs any more is forgotten, not renewed forever.
    identities.certificate("gone")
    clock.now = NOW + 10
    assert identities.renew_due(keep={"b"}) == {"b"}
    assert identities.names() == {"b"}
    # A certificate past expiry (no timer ran) is never handed out.
    clock.now = NOW + 100
    assert identities.certificate("b").not_after > clock.now


# ---- delivery: scoping, rotation push, redaction ---------------------------------------------

MESH = """
kind: Service
name: a
endpoints: ["10.0.0.1:15006"]
sidecar: {port: 15006, mtls: strict, calls: [{service: b, local_port: 9001}]}
---
kind: Service
name: b
endpoints: ["10.0.0.2:15006"]
sidecar:
  port: 15006
  mtls: permissive
  authorization: {action: ALLOW, rules: [{from: [a], methods: [GET]}]}
---
kind: Service
name: plain
endpoints: ["10.0.0.3:80"]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules: [{backends: [b]}]
---
kind: Gateway
name: other
listeners: [{name: http, port: 8081}]
---
kind: Route
name: r2
gateway: other
rules: [{backends: [plain]}]
"""


def _model(tmp_path: Path, text: str = MESH):
    (tmp_path / "mesh.yaml").write_text(text)
    return load_policy(tmp_path)


def _secrets(snapshot) -> dict[str, object]:
    return dict(snapshot.get(types.SECRET).items())


def test_each_view_gets_only_its_own_identity(tmp_path: Path, ca: CertificateAuthority) -> None:
    identities = WorkloadIdentities(ca, ttl=60, clock=Clock())
    translation = Translation(_model(tmp_path), identities=identities)
    keys = {}
    for view in ("a", "b", "edge"):
        snapshot = translation.snapshot(view)
        secrets = _secrets(snapshot)
        assert set(secrets) == {mtls.IDENTITY_SECRET, mtls.TRUST_BUNDLE_SECRET}, view
        rendered = snapshot_to_dict(snapshot)["resources"]["secrets"]
        identity = next(s for s in rendered if s["name"] == mtls.IDENTITY_SECRET)
        cert = x509.load_pem_x509_certificate(
            identity["tls_certificate"]["certificate_chain"]["inline_string"].encode())
        assert _uris(cert) == [f"spiffe://example.org/ns/default/sa/{view}"]
        # Redacted in every dump (debug/config_dump, meshpilot render).
        assert identity["tls_certificate"]["private_key"]["inline_string"] == fingerprint(
            identities.certificate(view).private_key)
        assert "PRIVATE KEY" not in str(snapshot_to_dict(snapshot))
        keys[view] = identities.certificate(view).private_key
        # The raw bytes sent to this view hold its own key and no other view's.
        body = b"".join(r.body for r in snapshot.get(types.SECRET).values())
        assert keys[view] in body
        assert not any(k in body for v, k in keys.items() if v != view)
    # No mesh mTLS in a view: no identity at all (a gateway to plain services, a bystander).
    assert _secrets(translation.snapshot("other")) == {}
    assert _secrets(translation.snapshot("plain")) == {}
    assert "plain" not in identities.names()


def test_rotation_is_an_sds_only_change(tmp_path: Path, ca: CertificateAuthority) -> None:
    clock = Clock()
    identities = WorkloadIdentities(ca, ttl=60, clock=clock)
    translation = Translation(_model(tmp_path), identities=identities)
    before = translation.snapshot("a")
    assert translation.refresh_identity(before) is before  # nothing renewed: nothing changes
    clock.now += 30
    assert identities.renew_due() == {"a"}
    after = translation.refresh_identity(before)
    for type_url in before.type_urls():
        if type_url == types.SECRET:
            assert after.get(type_url).version != before.get(type_url).version
        else:
            assert after.get(type_url) is before.get(type_url), type_url
    old, new = _secrets(before), _secrets(after)
    assert old[mtls.TRUST_BUNDLE_SECRET] is new[mtls.TRUST_BUNDLE_SECRET]
    assert old[mtls.IDENTITY_SECRET].version != new[mtls.IDENTITY_SECRET].version


def test_without_a_ca_no_identity_secrets_and_same_listeners(tmp_path: Path) -> None:
    model = _model(tmp_path)
    plain, secured = Translation(model), Translation(
        model, identities=WorkloadIdentities(CertificateAuthority.create(), clock=Clock()))
    assert _secrets(plain.snapshot("a")) == {}
    for type_url in (types.LISTENER, types.CLUSTER, types.ROUTE):
        assert plain.snapshot("a").get(type_url).version == \
            secured.snapshot("a").get(type_url).version


# ---- the language ---------------------------------------------------------------------------


@pytest.mark.parametrize(("sidecar", "message"), [
    ("{port: 15006, mtls: sometimes}", "mtls"),
    ("{port: 15006, authorization: {action: ALLOW, rules: [{from: [a]}]}}",
     "need mtls strict or permissive"),
    ("{port: 15006, authorization: {rules: [{namespaces: [shop]}]}}",
     "rules with `from` or `namespaces` need mtls strict or permissive"),
    ("{port: 15006, mtls: strict, authorization: {rules: [{namespaces: ['a b']}]}}",
     "namespaces[0]"),
    ("{port: 15006, mtls: strict, authorization: {rules: [{namespaces: [shop, shop]}]}}",
     "listed twice"),
    ("{port: 15006, mtls: strict, namespace: 'a b'}", "sidecar.namespace"),
    ("{port: 15006, mtls: strict, service_account: [x]}", "sidecar.service_account"),
    ("{port: 15006, mtls: strict, authorization: {rules: [{from: [nobody]}]}}",
     'no Service or Gateway named "nobody"'),
    ("{port: 15006, mtls: strict, authorization: {rules: [{from: [\"spiffe://\"]}]}}",
     "invalid SPIFFE ID"),
    ("{port: 15006, mtls: strict, authorization: {rules: [{to: [a]}]}}", "to"),
])
def test_sidecar_security_errors(tmp_path: Path, sidecar: str, message: str) -> None:
    text = f"""
kind: Service
name: a
endpoints: ["10.0.0.1:15006"]
sidecar: {sidecar}
"""
    with pytest.raises(PolicyError) as caught:
        _model(tmp_path, text)
    assert message in str(caught.value), str(caught.value)


def test_mtls_and_service_tls_conflict(tmp_path: Path) -> None:
    text = """
kind: Service
name: a
endpoints: ["10.0.0.1:15006"]
sidecar: {port: 15006, mtls: strict}
tls: {sni: a.example}
"""
    with pytest.raises(PolicyError, match="gets its TLS from the mesh CA"):
        _model(tmp_path, text)


def test_allow_with_no_rules_denies_everyone(tmp_path: Path) -> None:
    text = """
kind: Service
name: a
endpoints: ["10.0.0.1:15006"]
sidecar: {port: 15006, mtls: strict, authorization: {action: ALLOW}}
"""
    resources = snapshot_to_dict(Translation(_model(tmp_path, text)).snapshot("a"))["resources"]
    filters = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"]
    # In the chain, disabled: the inbound routes (RDS) switch it on with the policy, so a
    # policy edit never replaces the listener (issue 14, bug 2).
    assert next(f for f in filters if f["name"] == mtls.RBAC_FILTER)["disabled"] is True
    (routes,) = resources["routes"]
    vhost = routes["virtual_hosts"][0]
    rbac = vhost["typed_per_filter_config"][mtls.RBAC_FILTER]["rbac"]
    assert rbac["rules"] == {}  # action ALLOW (the default, 0) with no policy: nothing passes


# ---- namespaces and service accounts --------------------------------------------------------

NAMESPACED = """
kind: Service
name: api
endpoints: ["10.0.0.1:15006"]
sidecar:
  port: 15006
  mtls: strict
  namespace: shop
  authorization: {rules: [{namespaces: [shop], not: {from: [front]}}, {from: [front, plain]}]}
---
kind: Service
name: front
endpoints: ["10.0.0.2:15006"]
sidecar: {port: 15006, mtls: strict, namespace: shop, service_account: web, outbound_port: 15001, calls: [api]}
---
kind: Service
name: plain
endpoints: ["10.0.0.3:15006"]
sidecar: {port: 15006, mtls: strict, outbound_port: 15001, calls: [api]}
"""


def test_namespace_and_service_account_make_the_identity(tmp_path: Path) -> None:
    from meshpilot.ca.authority import DEFAULT_NAMESPACE
    from meshpilot.ir.model import MESH_NAMESPACE
    assert MESH_NAMESPACE == DEFAULT_NAMESPACE  # the default namespace of both halves
    model = _model(tmp_path, NAMESPACED)
    identities = {s.name: s.sidecar.identity for s in model.services if s.sidecar}
    assert identities == {"api": "ns/shop/sa/api", "front": "ns/shop/sa/web", "plain": None}
    only_account = _model(tmp_path, NAMESPACED.replace("namespace: shop, service_account",
                                                       "service_account"))
    assert only_account.service("front").sidecar.identity == "ns/default/sa/web"


def test_the_ca_issues_the_written_identity_and_callers_expect_it(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    translation = Translation(_model(tmp_path, NAMESPACED),
                              identities=WorkloadIdentities(ca, ttl=60, clock=Clock()))
    for view, expected in (("front", "ns/shop/sa/web"), ("plain", "ns/default/sa/plain")):
        rendered = snapshot_to_dict(translation.snapshot(view))["resources"]
        identity = next(s for s in rendered["secrets"] if s["name"] == mtls.IDENTITY_SECRET)
        cert = x509.load_pem_x509_certificate(
            identity["tls_certificate"]["certificate_chain"]["inline_string"].encode())
        assert _uris(cert) == [f"spiffe://example.org/{expected}"]
        # The caller's cluster to api accepts api's written identity only.
        (cluster,) = [c for c in rendered["clusters"] if c["name"] == "api"]
        context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        sans = context["combined_validation_context"]["default_validation_context"][
            "match_typed_subject_alt_names"]
        assert [m["matcher"]["exact"] for m in sans] == ["spiffe://example.org/ns/shop/sa/api"]


def test_namespaces_and_names_in_rules_become_the_callers_spiffe_ids(tmp_path: Path) -> None:
    rendered = snapshot_to_dict(Translation(_model(tmp_path, NAMESPACED)).snapshot("api"))
    (routes,) = rendered["resources"]["routes"]
    policies = routes["virtual_hosts"][0]["typed_per_filter_config"][mtls.RBAC_FILTER][
        "rbac"]["rules"]["policies"]
    text = str(policies)
    # A namespace is the prefix of its identities; a name is the identity its Service wrote.
    assert "'prefix': 'spiffe://cluster.local/ns/shop/sa/'" in text
    assert "'exact': 'spiffe://cluster.local/ns/shop/sa/web'" in text
    assert "'exact': 'spiffe://cluster.local/ns/default/sa/plain'" in text
    assert "ns/default/sa/front" not in text

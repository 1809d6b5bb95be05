"""BackendTLSPolicy as an input: TLS from the Gateway's Envoy to a Service's endpoints, the
certificate checked against a ConfigMap's CA (or the system's) and the policy's hostname (or
its subjectAltNames). Traffic: the conformance test's BackendTLSPolicy cases."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from test_gatewayapi import GATEWAY, _random_slot, route, status_of, view
from tls_material import CA

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import PolicyLoader, load_policy, load_policy_text

ROUTE = route("  rules: [{backendRefs: [{name: web, port: 8080}]}]\n---\n")


def policy(validation: str, name: str = "p", target: str = "{group: '', kind: Service, "
           "name: web}", version: str = "v1", stamp: str | None = None) -> str:
    extra = f", creationTimestamp: '{stamp}'" if stamp else ""
    return f"""apiVersion: gateway.networking.k8s.io/{version}
kind: BackendTLSPolicy
metadata: {{name: {name}, namespace: infra{extra}}}
spec:
  targetRefs: [{target}]
  validation: {validation}
---
"""


def ca_map(pem: bytes, name: str = "ca") -> str:
    indented = "\n".join("    " + line for line in pem.decode().splitlines())
    return f"""apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: infra}}
data:
  ca.crt: |
{indented}
---
"""


def cluster(model, name: str = "infra/web:8080") -> dict:  # type: ignore[no-untyped-def]
    (found,) = [c for c in view(model)["clusters"] if c["name"] == name]
    return found  # type: ignore[no-any-return]


def validation_of(found: dict) -> dict:
    context = found["transport_socket"]["typed_config"]
    return context  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", ["v1", "v1alpha3"])
def test_a_policy_makes_the_cluster_speak_tls_with_sni_san_and_ca(version: str) -> None:
    ca = CA()
    model = load_policy_text(GATEWAY + ROUTE + ca_map(ca.pem) + policy(
        "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: web.example.com}",
        version=version))
    assert status_of(model, "BackendTLSPolicy", "infra/p") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    context = validation_of(cluster(model))
    assert context["sni"] == "web.example.com"
    combined = context["common_tls_context"]["combined_validation_context"]
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "web.example.com"}}]
    secret_name = combined["validation_context_sds_secret_config"]["name"]
    (secret,) = [s for s in view(model)["secrets"] if s["name"] == secret_name]
    assert secret["validation_context"]["trusted_ca"]["inline_string"] == ca.pem.decode()


def test_subject_alt_names_replace_the_hostname_as_what_the_certificate_must_carry() -> None:
    model = load_policy_text(GATEWAY + ROUTE + ca_map(CA().pem) + policy(
        "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: web.example.com,"
        " subjectAltNames: [{type: Hostname, hostname: other.example.com},"
        " {type: URI, uri: 'spiffe://example.com/web'}]}"))
    context = validation_of(cluster(model))
    assert context["sni"] == "web.example.com"
    sans = context["common_tls_context"]["combined_validation_context"][
        "default_validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "DNS", "matcher": {"exact": "other.example.com"}},
                    {"san_type": "URI", "matcher": {"exact": "spiffe://example.com/web"}}]


def test_a_section_name_targets_one_port_by_name() -> None:
    model = load_policy_text(GATEWAY + ROUTE + ca_map(CA().pem) + policy(
        "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: w.example.com}",
        target="{group: '', kind: Service, name: web, sectionName: other}"))
    assert "transport_socket" not in cluster(model)  # port "http" is not the one targeted
    model = load_policy_text(GATEWAY + ROUTE + ca_map(CA().pem) + policy(
        "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: w.example.com}",
        target="{group: '', kind: Service, name: web, sectionName: http}"))
    assert "transport_socket" in cluster(model)


def test_system_ca_certificates_are_the_machines_bundle() -> None:
    model = load_policy_text(GATEWAY + ROUTE + policy(
        "{wellKnownCACertificates: System, hostname: web.example.com}"))
    assert status_of(model, "BackendTLSPolicy", "infra/p")["Accepted"] == ("True", "Accepted")
    secrets = [s for s in view(model)["secrets"] if s["name"].startswith("infra/web:8080")]
    assert "BEGIN CERTIFICATE" in secrets[0]["validation_context"]["trusted_ca"]["inline_string"]


@pytest.mark.parametrize(("refs", "reason"), [
    ("[{group: '', kind: ConfigMap, name: missing}]", "InvalidCACertificateRef"),
    ("[{group: '', kind: Secret, name: ca}]", "InvalidKind"),
    ("[{group: '', kind: ConfigMap, name: bad}]", "InvalidCACertificateRef"),
])
def test_no_valid_ca_certificate_answers_500_and_never_plaintext(refs: str, reason: str) -> None:
    bad = ca_map(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----",
                 name="bad")
    model = load_policy_text(GATEWAY + ROUTE + bad + policy(
        f"{{caCertificateRefs: {refs}, hostname: web.example.com}}"))
    assert status_of(model, "BackendTLSPolicy", "infra/p") == {
        "Accepted": ("False", "NoValidCACertificate"), "ResolvedRefs": ("False", reason)}
    assert not [c for c in view(model).get("clusters", []) if c["name"] == "infra/web:8080"]
    (routes,) = view(model)["routes"][0]["virtual_hosts"][0]["routes"][:1]
    assert routes["direct_response"]["status"] == 500
    assert status_of(model, "HTTPRoute", "infra/r")["ResolvedRefs"] == ("True", "ResolvedRefs")


def test_the_older_of_two_policies_for_one_target_wins_the_other_is_conflicted() -> None:
    model = load_policy_text(GATEWAY + ROUTE + ca_map(CA().pem) + policy(
        "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: new.example}",
        name="new", stamp="2024-01-01T00:00:00Z") + policy(
        "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: old.example}",
        name="old", stamp="2020-01-01T00:00:00Z"))
    assert status_of(model, "BackendTLSPolicy", "infra/old")["Accepted"] == ("True", "Accepted")
    assert status_of(model, "BackendTLSPolicy", "infra/new")["Accepted"] == \
        ("False", "Conflicted")
    assert validation_of(cluster(model))["sni"] == "old.example"


def test_shape_errors_have_the_field_path() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + policy("{hostname: web.example.com}"))
    assert 'BackendTLSPolicy infra/p: spec.validation: one of "caCertificateRefs" and ' \
        '"wellKnownCACertificates" must be given' in str(error.value)
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + policy("{wellKnownCACertificates: Mine, hostname: a.b}"))
    assert "BackendTLSPolicy infra/p: spec.validation.wellKnownCACertificates: must be one " \
        "of System" in str(error.value)
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + policy("{wellKnownCACertificates: System, hostname: a.b,"
                                          " subjectAltNames: [{type: URI}]}"))
    assert "spec.validation.subjectAltNames[0]" in str(error.value)


def test_an_edited_ca_config_map_is_reconciled_by_a_reload(tmp_path: Path) -> None:
    """Upstream's reconcile step: the CA a policy names changes, the cluster trusts the new
    one; an incremental load equals a cold one."""
    first, second = CA(), CA()
    (tmp_path / "gw.yaml").write_text(GATEWAY + ROUTE + policy(
        "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: w.example}"))
    (tmp_path / "ca.yaml").write_text(ca_map(first.pem))
    loader = PolicyLoader(tmp_path)
    model = loader.load()
    assert model == load_policy(tmp_path)

    def trusted(model) -> str:  # type: ignore[no-untyped-def]
        (secret,) = [s for s in view(model)["secrets"] if s["name"].endswith("/ca")]
        return secret["validation_context"]["trusted_ca"]["inline_string"]  # type: ignore

    assert trusted(model) == first.pem.decode()
    (tmp_path / "ca.yaml").write_text(ca_map(second.pem))
    model = loader.load()
    assert model == load_policy(tmp_path)
    assert trusted(model) == second.pem.decode()
    (tmp_path / "ca.yaml").unlink()
    model = loader.load()
    assert status_of(model, "BackendTLSPolicy", "infra/p")["ResolvedRefs"] == \
        ("False", "InvalidCACertificateRef")


def test_hostile_tls_documents_give_policy_errors_only() -> None:
    from test_gatewayapi_tls import TLS_GATEWAY, tls_route
    documents = [d for d in yaml.safe_load_all(
        TLS_GATEWAY + tls_route("[a.example.com]", "[{name: secure, port: 443, weight: 2}]")
        + ca_map(CA().pem) + policy(
            "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: a.b,"
            " subjectAltNames: [{type: URI, uri: 'spiffe://x/y'}]}",
            target="{group: '', kind: Service, name: secure}")) if d]
    junk = [None, 0, -1, 70000, "", "x" * 300, [], {}, [1], {"a": 1}, True, "*", "/", "-a-"]
    generator = random.Random(7)
    for _ in range(200):
        mutated = yaml.safe_load(yaml.safe_dump(documents))
        target = generator.choice(mutated)
        for _ in range(generator.randint(1, 3)):
            node, key = _random_slot(generator, target)
            if key is not None:
                node[key] = generator.choice(junk)
        try:
            model = load_policy_text(yaml.safe_dump_all(mutated))
        except PolicyError as error:
            assert all(issue.position is not None for issue in error.issues)
            continue
        view(model)  # what loads translates


def test_validate_lists_a_policy_that_cannot_be_applied(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from meshpilot.cli import main
    (tmp_path / "gw.yaml").write_text(GATEWAY + ROUTE + policy(
        "{caCertificateRefs: [{group: '', kind: ConfigMap, name: missing}], hostname: w.example}"))
    assert main(["validate", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("KIND"))
    row = next(line for line in lines if line.startswith("BackendTLSPolicy "))
    assert row.index("infra/p") == header.index("NAME")  # the columns stay aligned
    assert "Accepted=False(NoValidCACertificate)" in row and "(gw.yaml:" in row
    assert any("ResolvedRefs: no ConfigMap infra/missing" in line for line in lines)


def test_a_policy_says_its_status_per_ancestor_gateway() -> None:
    """The spec's PolicyAncestorStatus: one status per Gateway whose routes send to a target
    of the policy (an older policy's loser too); a policy no Gateway sends through has one
    status with no ancestor."""
    ca = CA()
    second = GATEWAY.split("---\n")[1].replace("name: edge", "name: side") + "---\n"
    side_route = route("  rules: [{backendRefs: [{name: web, port: 8080}]}]\n---\n",
                       name="s").replace("name: edge", "name: side")
    validation = "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: w.io}"
    model = load_policy_text(
        GATEWAY + second + ROUTE + side_route + ca_map(ca.pem)
        + policy(validation, stamp="2026-01-01T00:00:00Z")
        + policy(validation, name="late", stamp="2026-02-01T00:00:00Z")
        + policy(validation, name="idle", target="{group: '', kind: Service, name: nobody}"))
    statuses = {(s.name, s.parent): {c.type: (c.status, c.reason) for c in s.conditions}
                for s in model.statuses if s.kind == "BackendTLSPolicy"}
    assert set(statuses) == {("infra/p", "infra/edge"), ("infra/p", "infra/side"),
                             ("infra/late", "infra/edge"), ("infra/late", "infra/side"),
                             ("infra/idle", "")}
    assert statuses[("infra/p", "infra/side")]["Accepted"] == ("True", "Accepted")
    assert statuses[("infra/late", "infra/edge")]["Accepted"] == ("False", "Conflicted")

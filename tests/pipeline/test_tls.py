"""TLS without Envoy: the `tls` fields (listener termination, Service origination, redirects)
load or fail at the right file:line:col, certificates become SDS Secrets that no Listener or
Cluster inlines, keys are redacted everywhere, and the watcher follows the certificate files."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from tls_material import CA

from meshpilot.base import tlsfiles as tls
from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.runtime.controller import Controller
from meshpilot.translators import Translation
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.redact import MARKER, fingerprint
from meshpilot.xds.render import snapshot_to_dict


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture
def certs(tmp_path: Path, ca: CA) -> Path:
    folder = tmp_path / "certs"
    ca.issue("a.example.com").write(folder, "a")
    ca.issue("b.example.com").write(folder, "b")
    ca.write(folder / "ca.pem")
    return folder


def gateway(certs: Path, listener_extra: str = "", certificates: str | None = None) -> str:
    certificates = certificates or (f'[{{cert: "{certs}/a.pem", key: "{certs}/a.key"}}, '
                                    f'{{cert: "{certs}/b.pem", key: "{certs}/b.key"}}]')
    return f"""kind: Gateway
name: edge
listeners:
  - name: https
    port: 8443
    protocol: https
    tls:
      certificates: {certificates}{listener_extra}
  - {{name: http, port: 8080, redirect_to_https: 8443}}
"""


SERVICE = """kind: Service
name: api
endpoints: ["127.0.0.1:9443"]
tls: {tls}
---
kind: Route
name: site
gateway: edge
rules: [{{backends: [api]}}]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy_text(text, "edge.yaml")
    return [str(issue) for issue in raised.value.issues]


# ---- loading --------------------------------------------------------------------------------


def test_a_listener_with_tls_loads_its_certificates(certs: Path) -> None:
    model = load_policy_text(gateway(certs, '\n      min_version: "1.3"\n      alpn: [h2]'))
    https, http = model.gateways[0].listeners
    assert https.protocol == "http" and https.tls is not None  # https: http over TLS
    assert [c.cert_path for c in https.tls.certificates] == [f"{certs}/a.pem", f"{certs}/b.pem"]
    assert https.tls.min_version == "1.3" and https.tls.alpn == ("h2",)
    assert https.tls.certificates[0].private_key == (certs / "a.key").read_bytes()
    assert http.tls is None and http.redirect_to_https == 8443
    assert "PRIVATE" not in repr(model)  # keys stay out of every repr, hence every log


def test_a_missing_certificate_is_reported_at_its_cert_field(certs: Path) -> None:
    (certs / "a.pem").unlink()
    assert problems(gateway(certs)) == [
        f"edge.yaml:8:29: Gateway edge: listeners[0].tls.certificates[0].cert: certificate "
        f"file {certs}/a.pem does not exist"]


def test_a_key_of_another_certificate_is_refused(certs: Path, ca: CA) -> None:
    (certs / "a.key").write_bytes(ca.issue("other.example.com").key_pem)
    (found,) = problems(gateway(certs))
    assert found.startswith("edge.yaml:8:29: Gateway edge: listeners[0].tls.certificates[0]"
                            ".cert: certificate ")
    assert found.endswith(f"does not match private key {certs}/a.key (the key belongs to "
                          "another certificate)")


def test_unusable_files_are_reported_without_their_content(certs: Path) -> None:
    (certs / "a.pem").write_text("not a certificate\n")
    secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRETBYTES\n-----END PRIVATE KEY-----\n"
    (certs / "b.key").write_text(secret)
    found = problems(gateway(certs))
    column = gateway(certs).splitlines()[7].index(f'"{certs}/b.key"') + 1
    assert found == [
        f"edge.yaml:8:29: Gateway edge: listeners[0].tls.certificates[0].cert: certificate "
        f"file {certs}/a.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        f"edge.yaml:8:{column}: Gateway edge: listeners[0].tls.certificates[1].key: private key "
        f"file {certs}/b.key holds no usable PEM private key (-----BEGIN PRIVATE KEY-----)"]
    assert "TOPSECRET" not in "".join(found)


def test_an_unreadable_key_is_reported(certs: Path) -> None:
    # A path through a regular file cannot be opened, whoever runs the test (root ignores
    # permission bits, so a chmod would prove nothing here).
    text = gateway(certs).replace(f"{certs}/a.key", f"{certs}/a.pem/a.key")
    (found,) = problems(text)
    assert "listeners[0].tls.certificates[0].key: cannot read private key file" in found
    assert "Not a directory" in found


@pytest.mark.parametrize(("listener", "message"), [
    ("{name: h, port: 1, protocol: https}", 'listeners[0].tls: missing "tls"'),
    ("{name: h, port: 1, tls: {certificates: []}}",
     'listeners[0].tls: tls needs "protocol: https" on this listener'),
    ("{name: h, port: 1, redirect_to_https: false}",
     "listeners[0].redirect_to_https: expected true (https on port 443) or the https port, "
     "found false"),
    ("{name: h, port: 1, protocol: tcp, service: s, redirect_to_https: true}",
     'listeners[0].redirect_to_https: "redirect_to_https" is an HTTP option; this listener '
     "has protocol tcp"),
    ("{name: h, port: 1, protocol: https, tls: {certificates: [], min_version: 1.3}}",
     'listeners[0].tls.min_version: write the version in quotes: "1.3"'),
    ("{name: h, port: 1, protocol: https, tls: {certificates: [], alpn: [h3]}}",
     'listeners[0].tls.alpn[0]: unknown value "h3"'),
    ("{name: h, port: 1, protocol: https, tls: {certificates: [{cert: a.pem}]}}",
     'listeners[0].tls.certificates[0].key: missing "key"'),
])
def test_listener_tls_shape_errors(listener: str, message: str) -> None:
    found = problems(f"kind: Gateway\nname: edge\nlisteners:\n  - {listener}\n")
    assert any(message in problem for problem in found), found


def test_service_tls_needs_a_ca_to_verify(certs: Path) -> None:
    found = problems(gateway(certs) + "---\n" + SERVICE.format(tls="{sni: api.internal}"))
    assert any('Service api: tls.ca: missing "ca": verify needs the CA certificates' in p
               for p in found), found
    model = load_policy_text(gateway(certs) + "---\n" + SERVICE.format(
        tls="{sni: api.internal, verify: false}"))
    assert model.service("api").tls.ca is None
    found = problems(gateway(certs) + "---\n" + SERVICE.format(tls=f"{{ca: {certs}/nope.pem}}"))
    assert any(f"tls.ca: CA file {certs}/nope.pem does not exist" in p for p in found), found


# ---- translation ----------------------------------------------------------------------------


def edge_view(certs: Path) -> tuple[Translation, dict]:
    text = gateway(certs) + "---\n" + SERVICE.format(
        tls=f'{{sni: api.internal, ca: "{certs}/ca.pem"}}')
    translation = Translation(load_policy_text(text))
    return translation, snapshot_to_dict(translation.snapshot("edge"))


def test_certificates_are_sds_secrets_never_inline_in_listeners_or_clusters(certs: Path) -> None:
    translation, rendered = edge_view(certs)
    snapshot = translation.snapshot("edge")
    for type_url in (types.LISTENER, types.CLUSTER, types.ROUTE):
        for resource in snapshot.get(type_url).values():
            assert b"-----BEGIN" not in resource.body, resource.name
    listeners = {item["name"]: item for item in rendered["resources"]["listeners"]}
    context = listeners["edge/https"]["filter_chains"][0]["transport_socket"]["typed_config"]
    sds = context["common_tls_context"]["tls_certificate_sds_secret_configs"]
    assert [(s["name"], s["sds_config"]) for s in sds] == [
        ("edge/https/tls[0]", {"ads": {}, "resource_api_version": "V3"}),
        ("edge/https/tls[1]", {"ads": {}, "resource_api_version": "V3"})]
    secrets = {item["name"]: item for item in rendered["resources"]["secrets"]}
    assert sorted(secrets) == ["api/ca", "edge/https/tls[0]", "edge/https/tls[1]"]
    pem = (certs / "a.pem").read_text()
    assert secrets["edge/https/tls[0]"]["tls_certificate"] == {
        "certificate_chain": {"inline_string": pem},
        "private_key": {"inline_string": fingerprint((certs / "a.key").read_bytes())}}
    (cluster,) = rendered["resources"]["clusters"]
    upstream = cluster["transport_socket"]["typed_config"]
    assert upstream["sni"] == "api.internal"
    combined = upstream["common_tls_context"]["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "api/ca"
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.internal"}}]
    redirect = listeners["edge/http"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "rds" not in redirect
    (route,) = redirect["route_config"]["virtual_hosts"][0]["routes"]
    assert route["redirect"] == {"https_redirect": True, "port_redirect": 8443}
    assert sorted(r["name"] for r in rendered["resources"]["routes"]) == ["edge/https"]


def test_a_new_certificate_changes_only_its_secret(certs: Path, ca: CA) -> None:
    before, _ = edge_view(certs)
    ca.issue("a.example.com", "www.a.example.com").write(certs, "a")  # another SAN, too
    after, _ = edge_view(certs)
    old, new = before.snapshot("edge"), after.snapshot("edge")
    changed = [t for t in (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE,
                           types.SECRET) if old.get(t).version != new.get(t).version]
    assert changed == [types.SECRET]
    assert [name for name, r in new.get(types.SECRET).items()
            if old.get(types.SECRET)[name].version != r.version] == ["edge/https/tls[0]"]


def test_render_and_the_admin_dump_redact_private_keys(certs: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "edge.yaml").write_text(gateway(certs))
    result = subprocess.run([sys.executable, "-m", "meshpilot", "render", str(policy),
                             "--node-cluster", "edge", "--allow-files-from", str(certs)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "edge/https/tls[1]" in result.stdout and MARKER in result.stdout
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    async def scenario() -> None:
        mp = Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                                admin_address="127.0.0.1:0", watch=False,
                                allowed_files=(certs,)))
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://{mp.admin_address}/debug/config_dump?view=edge",
                    headers={"Authorization": f"Bearer {mp.tokens.issue('operator')}"}
            ) as response:
                assert response.status == 200
                text = await response.text()
        finally:
            await mp.stop()
        assert "edge/https/tls[0]" in text and MARKER in text
        assert "PRIVATE KEY" not in text

    asyncio.run(scenario())


# ---- reloading on certificate changes --------------------------------------------------------


def test_the_controller_records_the_tls_files_even_when_the_load_fails(certs: Path,
                                                                       tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "edge.yaml").write_text(gateway(certs))
    controller = Controller(policy, SnapshotCache(), allowed_files=(certs,))
    assert controller.reload()
    expected = {str(certs / name) for name in ("a.pem", "a.key", "b.pem", "b.key")}
    assert controller.tls_files == expected
    (policy / "edge.yaml").write_text(gateway(certs, certificates=(
        f'[{{cert: "{certs}/new/c.pem", key: "{certs}/new/c.key"}}]')))
    assert not controller.reload()
    assert str(certs / "new" / "c.pem") in controller.tls_files  # watched until it appears
    assert expected <= controller.tls_files


def test_with_recording_collects_every_file_read(certs: Path) -> None:
    with tls.recording() as files:
        tls.read_certificate(str(certs / "a.pem"), str(certs / "a.key"))
        with pytest.raises(tls.TlsFileError):
            tls.read_ca(str(certs / "missing.pem"))
    assert files == {str(certs / "a.pem"), str(certs / "a.key"), str(certs / "missing.pem")}


def test_replacing_a_certificate_outside_the_policy_folder_reloads_the_secret(
        certs: Path, ca: CA, tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "edge.yaml").write_text(gateway(certs))

    async def scenario() -> None:
        mp = Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                                admin_address="127.0.0.1:0", debounce_quiet=0.02,
                                debounce_max=1.0, allowed_files=(certs,)))
        await mp.start()
        try:
            old = await mp.snapshot_of("edge")
            assert old is not None
            replacement = ca.issue("b.example.com")
            replacement.write(certs, "b")
            deadline = asyncio.get_running_loop().time() + 10
            while (new := mp.cache.get("edge")) is old or new is None or \
                    new.get(types.SECRET).version == old.get(types.SECRET).version:
                assert asyncio.get_running_loop().time() < deadline, "no reload"
                await asyncio.sleep(0.02)
            assert new.get(types.LISTENER).version == old.get(types.LISTENER).version
            body = new.get(types.SECRET)["edge/https/tls[1]"].body
            assert replacement.cert_pem in body
        finally:
            await mp.stop()

    asyncio.run(scenario())


def test_certificate_info(certs: Path) -> None:
    info = tls.pem_info((certs / "a.pem").read_bytes())
    assert info.names == ("a.example.com",) and len(info.fingerprint) == 64
    assert json.dumps(info.serial)


def test_a_route_cannot_name_a_redirecting_listener(certs: Path) -> None:
    found = problems(gateway(certs) + "---\nkind: Route\nname: r\ngateway: edge\n"
                     "listeners: [http]\nrules: [{direct_response: {status: 200}}]\n")
    assert any('listeners[0]: listener "http" of Gateway edge redirects every request to '
               "https (redirect_to_https): no Route is served there" in p for p in found), found


def test_the_schema_knows_the_tls_keys() -> None:
    from meshpilot.inputs.native import tls as tls_kind
    from meshpilot.inputs.native.schema import json_schema

    defs = json_schema()["$defs"]
    listener = defs["Gateway"]["properties"]["listeners"]["items"]["properties"]
    assert set(listener["tls"]["properties"]) == set(tls_kind.TLS_KEYS)
    certificate = listener["tls"]["properties"]["certificates"]["items"]
    assert set(certificate["properties"]) == set(tls_kind.CERTIFICATE_KEYS)
    assert set(defs["Service"]["properties"]["tls"]["properties"]) == \
        set(tls_kind.UPSTREAM_TLS_KEYS)


def test_relative_certificate_paths_are_relative_to_the_policy_folder(
        tmp_path: Path, certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshpilot.inputs.loader import PolicyLoader, load_policy

    policy = tmp_path / "policy"
    (policy / "tls").mkdir(parents=True)
    for name in ("a.pem", "a.key"):
        (policy / "tls" / name).write_bytes((certs / name).read_bytes())
    (policy / "edge.yaml").write_text(
        gateway(certs, certificates='[{cert: tls/a.pem, key: tls/a.key}]'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the files are: the policy folder is what counts
    loader = PolicyLoader(policy)
    for model in (load_policy(policy), loader.load(), load_policy(policy / "edge.yaml")):
        (certificate,) = model.gateways[0].listeners[0].tls.certificates
        assert certificate.certificate_chain == (certs / "a.pem").read_bytes()
        assert certificate.cert_path == "tls/a.pem"  # as written, for messages
    # What is watched for rotation is the file actually read.
    assert str(policy / "tls" / "a.pem") in loader.tls_files

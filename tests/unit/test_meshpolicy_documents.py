"""`kind: MeshPolicy` without Envoy: the document as the loader reads and checks it, and what it
makes of each sidecar (Istio's precedence: a port's mode over the sidecar's over its
namespace's over the mesh's; every DENY before any ALLOW). Traffic:
tests/e2e/test_mesh_policy.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import PolicyLoader, load_policy, load_policy_text
from meshpilot.ir.model import Authorization, AuthzRule, Sidecar
from meshpilot.translators import Translation

SERVICES = """
kind: Service
name: cart
endpoints: ["10.0.0.1:15006"]
sidecar: {port: 15006, app: 9080, namespace: shop}
---
kind: Service
name: own
endpoints: ["10.0.0.2:15006"]
sidecar: {port: 15006, app: 9080, namespace: shop, mtls: off,
          authorization: {rules: [{paths: [/own]}]}}
---
kind: Service
name: ports
endpoints: ["10.0.0.3:15006"]
sidecar: {namespace: shop, ports: [{port: 15006, app: 9080},
                                   {port: 15007, app: 9081, mtls: off}]}
---
kind: Service
name: web
endpoints: ["10.0.0.4:15006"]
sidecar: {port: 15006, app: 9080}
---
kind: Service
name: db
protocol: tcp
endpoints: ["10.0.0.5:15006"]
sidecar: {port: 15006, app: 5432, namespace: shop}
"""

POLICIES = """
kind: MeshPolicy
name: mesh
namespace: "*"
mtls: permissive
authorization: {action: DENY, rules: [{paths: [/debug/*]}]}
---
kind: MeshPolicy
name: shop
namespace: shop
mtls: strict
authorization: {rules: [{namespaces: [shop]}]}
---
kind: MeshPolicy
name: shop-deny
namespace: shop
authorization: {action: DENY, rules: [{namespaces: [legacy]}]}
"""


def sidecar(text: str, name: str) -> Sidecar:
    found = load_policy_text(text).service(name)
    assert found is not None and found.sidecar is not None
    return found.sidecar


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text)
    return [re.sub(r":\d+:\d+:", ":L:C:", str(issue), count=1) for issue in caught.value.issues]


def test_the_namespace_mode_wins_over_the_mesh_and_the_sidecars_over_both() -> None:
    text = SERVICES + "---\n" + POLICIES
    assert sidecar(text, "cart").mtls == "strict"  # shop's
    assert sidecar(text, "web").mtls == "permissive"  # the mesh's (namespace default)
    assert sidecar(text, "own").mtls == "off"  # its own
    ports = sidecar(text, "ports")
    assert (ports.mode_of(15006), ports.mode_of(15007)) == ("strict", "off")  # a port's own


def test_without_policies_nothing_changes() -> None:
    assert sidecar(SERVICES, "cart").mtls == "off"
    assert sidecar(SERVICES, "own").authorization == Authorization(
        "ALLOW", (AuthzRule(paths=sidecar(SERVICES, "own").authorization.rules[0].paths),))
    assert sidecar(SERVICES, "cart").deny is None


def test_every_deny_joins_and_every_allow_joins() -> None:
    text = SERVICES + "---\n" + POLICIES
    own = sidecar(text, "own")
    assert own.deny is not None and own.authorization is not None
    # DENY: the mesh's first, then the namespace's; ALLOW: the namespace's, then its own.
    assert [r.paths[0].value if r.paths else r.namespaces for r in own.deny.rules] == \
        ["/debug/", ("legacy",)]
    assert [r.namespaces or r.paths[0].value for r in own.authorization.rules] == \
        [("shop",), "/own"]
    web = sidecar(text, "web")  # namespace default: the mesh's DENY only, no ALLOW
    assert web.authorization is None and web.deny is not None and len(web.deny.rules) == 1


def test_a_sidecars_own_deny_joins_the_deny_rules() -> None:
    text = SERVICES.replace("authorization: {rules: [{paths: [/own]}]}",
                            "authorization: {action: DENY, rules: [{paths: [/own]}]}") \
        + "---\n" + POLICIES
    own = sidecar(text, "own")
    assert own.deny is not None and len(own.deny.rules) == 3
    assert own.authorization is not None and own.authorization.action == "ALLOW"


def test_tcp_sidecars_take_the_mode_and_are_warned_of_the_authorization() -> None:
    model = load_policy_text(SERVICES + "---\n" + POLICIES)
    db = model.service("db").sidecar
    assert db is not None and db.mtls == "strict" and db.authorization is None
    assert any("Service db (namespace shop) speaks tcp only" in str(w) for w in model.warnings)


def test_a_namespace_no_sidecar_is_in_is_warned() -> None:
    model = load_policy_text(SERVICES + "---\nkind: MeshPolicy\nname: x\nnamespace: shpo\n"
                                        "mtls: strict\n")
    assert any('no sidecar is in namespace shpo (did you mean "shop"?)' in str(w)
               for w in model.warnings)


def test_from_rules_get_the_mode_a_policy_gives() -> None:
    # Without a policy this is refused (no mTLS, no caller identity); the namespace's gives it.
    text = ("kind: Service\nname: b\nendpoints: [10.0.0.1:1]\nsidecar: {port: 15006, "
            "namespace: shop, authorization: {rules: [{from: [a]}]}}\n---\nkind: Service\n"
            "name: a\nendpoints: [10.0.0.2:1]\n")
    assert any("need mtls strict or permissive" in i and "no MeshPolicy" in i
               for i in issues(text))
    model = load_policy_text(text + "---\nkind: MeshPolicy\nname: s\nnamespace: shop\n"
                                    "mtls: permissive\n")
    assert model.service("b").sidecar.mtls == "permissive"


@pytest.mark.parametrize(("policy", "message"), [
    ("namespace: shop", "MeshPolicy p: a MeshPolicy gives mtls, authorization or both"),
    ("mtls: strict", 'MeshPolicy p: namespace: missing "namespace"'),
    ("namespace: 'a b'\nmtls: strict", "namespace:"),
    ("namespace: shop\nmtls: sometimes", 'mtls: unknown value "sometimes"'),
    ("namespace: shop\nmode: strict", 'unknown key "mode"'),
    ("namespace: shop\nauthorization: {rules: [{from: [nobody]}]}",
     'authorization.rules[0].from[0]: no Service or Gateway named "nobody"'),
    ("namespace: shop\nauthorization: {rules: [{claims: {sub: x}}]}",
     "claims and authenticated read a JWT"),
])
def test_mesh_policy_errors(policy: str, message: str) -> None:
    found = issues(SERVICES + f"---\nkind: MeshPolicy\nname: p\n{policy}\n")
    assert any(message in issue for issue in found), found


def test_from_rules_reaching_a_plaintext_sidecar_are_warned_of() -> None:
    model = load_policy_text(SERVICES + "---\n" + POLICIES)
    assert any("MeshPolicy shop: authorization: rules with `from` or `namespaces` need mtls, "
               "and the sidecar of Service own (namespace shop) has mtls off" in str(w)
               for w in model.warnings)


def test_one_mode_per_scope() -> None:
    found = issues(SERVICES + "---\n" + POLICIES + "---\nkind: MeshPolicy\nname: shop-too\n"
                                                   "namespace: shop\nmtls: off\n")
    assert any("MeshPolicy shop-too: mtls: the mtls of namespace shop is already given by "
               "MeshPolicy shop" in issue for issue in found), found


def test_a_meshpolicy_mode_conflicts_with_a_services_own_tls() -> None:
    text = ("kind: Service\nname: b\nendpoints: [10.0.0.1:1]\ntls: {verify: false}\n"
            "sidecar: {port: 15006}\n---\nkind: MeshPolicy\nname: m\nnamespace: '*'\n"
            "mtls: strict\n")
    assert any("tls: its namespace's MeshPolicy gives this Service mtls strict" in issue
               for issue in issues(text))


def test_incremental_reloads_take_policies_in_and_out(tmp_path: Path) -> None:
    """Adding, editing and removing a MeshPolicy, and editing a Service under one, through the
    watched folder's loader and `Translation(previous=...)`: what a cold load gives, each time."""
    (tmp_path / "services.yaml").write_text(SERVICES)
    loader = PolicyLoader(tmp_path)
    translation = Translation(loader.load())
    edits = [
        ("policies.yaml", POLICIES),
        ("policies.yaml", POLICIES.replace("namespaces: [shop]", "namespaces: [shop, legacy]")),
        ("services.yaml", SERVICES.replace("app: 9080, namespace: shop}",
                                           "app: 9081, namespace: shop}")),
        ("policies.yaml", None),
        ("services.yaml", SERVICES),
    ]
    for name, text in edits:
        if text is None:
            (tmp_path / name).unlink()
        else:
            (tmp_path / name).write_text(text)
        model = loader.load()
        cold = Translation(load_policy(tmp_path))
        assert model == cold.model
        translation = Translation(model, previous=translation)
        for view in ("cart", "own", "ports", "web", "db"):
            for type_url in (types.LISTENER, types.CLUSTER, types.ROUTE):
                mine, theirs = (t.snapshot(view).get(type_url) for t in (translation, cold))
                assert mine.names() == theirs.names()
                assert all(mine[n].body == theirs[n].body for n in mine.names()), (view, name)


def test_a_deny_policy_added_later_leaves_the_listeners_alone() -> None:
    """Every sidecar a MeshPolicy applies to has the deny filter (an empty DENY refuses
    nothing), so a DENY policy added later changes its route configuration only: the open
    connections see it at once (issue 14, bug 2)."""
    before = load_policy_text(SERVICES + "---\nkind: MeshPolicy\nname: m\nnamespace: shop\n"
                                         "mtls: strict\n")
    after = load_policy_text(SERVICES + "---\nkind: MeshPolicy\nname: m\nnamespace: shop\n"
                                        "mtls: strict\n---\nkind: MeshPolicy\nname: d\n"
                                        "namespace: shop\nauthorization: {action: DENY, "
                                        "rules: [{paths: [/admin]}]}\n")
    assert before.service("cart").sidecar.deny == Authorization("DENY")
    for view in ("cart", "own", "ports"):
        old, new = (Translation(m).snapshot(view) for m in (before, after))
        assert old.get(types.LISTENER).version == new.get(types.LISTENER).version, view
        assert old.get(types.ROUTE).version != new.get(types.ROUTE).version, view

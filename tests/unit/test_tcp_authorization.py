"""Callers' authorization on a TCP inbound (`translators/tcp_authorization.py`): a connection
is judged by who calls, from where and to which port, as Istio's RBAC builder does for TCP
workloads; its goldens (`authz-builder-golden/tcp`) decide the same connections."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf.json_format import MessageToDict
from rbac_eval import admits
from support import shared_folder

from meshpilot.base.types import LISTENER
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Authorization, AuthzRule, StringMatch
from meshpilot.translators import Translation
from meshpilot.translators.tcp_authorization import NETWORK_RBAC, narrowed

GOLDENS = shared_folder() / "conformance" / "istio" / "authz-builder-golden" / "tcp"
WORKLOAD = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin-1, namespace: foo, annotations: {meshpilot.io/app: "127.0.0.1:19000"}}
spec: {address: 10.0.0.1, labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: [httpbin.foo.svc.cluster.local]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: httpbin}}
"""
# The goldens' requestPrincipals need a RequestAuthentication here (meshpilot refuses them
# otherwise); a connection carries no token, so it changes nothing for TCP.
TOKENS = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules: [{issuer: issuer.example, jwks: '{"keys": []}'}]
"""
# Connections: the caller's identity (None: plaintext) and the port it reaches.
PROBES = [(principal, port)
          for principal in (None, "spiffe://cluster.local/ns/ns-1/sa/a",
                            "spiffe://cluster.local/ns/ns-2/sa/b",
                            "spiffe://cluster.local/ns/other/sa/c")
          for port in (80, 8080, 9090, 9000)]


def _network_rbac(model: Any, view: str) -> list[dict[str, Any]]:
    resource = Translation(model).snapshot(view).get(LISTENER)[f"inbound/{view}"]
    listener = Listener()
    listener.ParseFromString(resource.body)
    chains = MessageToDict(listener)["filterChains"]
    found = [f["typedConfig"] for f in chains[0]["filters"] if f["name"] == NETWORK_RBAC]
    for chain in chains[1:]:  # permissive's plaintext chain: the same filters
        assert [f["typedConfig"] for f in chain["filters"] if f["name"] == NETWORK_RBAC] == found
    return found


def _admits(config: dict[str, Any], principal: str | None, port: int) -> bool:
    return admits(config, {"principal": principal, "port": port})


# deny-both-http-tcp without its rule[10], whose `when` keys (destination.ip, connection.sni,
# request.auth.audiences, experimental.*) meshpilot refuses (docs/istio.md).
@pytest.mark.parametrize("case", ["allow-both-http-tcp", "allow-only-http", "deny-both-http-tcp"])
def test_connections_are_decided_as_istios_tcp_goldens(case: str) -> None:
    if not GOLDENS.is_dir():
        print(f"skipped: no {GOLDENS}")
        pytest.skip(f"no {GOLDENS}")
    # Their request principals as meshpilot spells them (issuer/subject): ignored for TCP.
    text = re.sub(r'"(id-\d)"', r'"issuer.example/\1"', (GOLDENS / f"{case}-in.yaml").read_text())
    policy = yaml.safe_load(text)
    golden = yaml.safe_load((GOLDENS / f"{case}-out.yaml").read_text())["typedConfig"]
    if case == "deny-both-http-tcp":
        policy["spec"]["rules"] = policy["spec"]["rules"][:10]
        golden["rules"]["policies"] = {name: rule for name, rule in golden["rules"][
            "policies"].items() if not name.endswith("rule[10]")}
    model = load_policy_text(WORKLOAD + "---\n" + TOKENS + "---\n" + yaml.safe_dump(policy),
                             f"{case}-in.yaml")
    ours = _network_rbac(model, "httpbin-1.foo")
    assert len(ours) == 1
    decided = [(probe, _admits(ours[0], *probe)) for probe in PROBES]
    expected = [(probe, _admits(golden, *probe)) for probe in PROBES]
    assert decided == expected
    admitted = [probe for probe, allowed in decided if allowed]
    # allow-both: only its all-TCP rule admits; allow-only-http: nothing; deny-both: its rules
    # left without conditions refuse every connection.
    assert admitted == ([("spiffe://cluster.local/ns/ns-1/sa/a", 80)]
                        if case == "allow-both-http-tcp" else [])


def test_a_workload_with_no_policy_gets_no_rbac_filter() -> None:
    assert _network_rbac(load_policy_text(WORKLOAD), "httpbin-1.foo") == []


def test_allow_rules_that_need_http_are_left_out_and_deny_rules_lose_those_conditions() -> None:
    by_path = AuthzRule(paths=(StringMatch("prefix", "/a"),), principals=("spiffe://x",))
    by_caller = AuthzRule(principals=("spiffe://y",),
                          exclude=AuthzRule(methods=("GET",)))
    assert narrowed(Authorization("ALLOW", (by_path, by_caller))).rules == ()
    assert narrowed(Authorization("ALLOW", (AuthzRule(ports=(80,)),))).rules == \
        (AuthzRule(ports=(80,)),)
    denied = narrowed(Authorization("DENY", (by_path, by_caller))).rules
    assert denied == (AuthzRule(principals=("spiffe://x",)), AuthzRule(principals=("spiffe://y",)))

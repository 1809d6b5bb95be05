"""Fuzzing the Istio input: hostile documents (Istio's own samples, mutated) only ever give
`PolicyError`s, never a crash; mostly-valid ones that load become resources Envoy accepts."""

from __future__ import annotations

import copy
import os
import random
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from static_check import static_bootstrap
from support import shared_folder

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.local.envoy_process import validate_config
from meshpilot.translators import Translation
from meshpilot.xds.render import snapshot_to_dict

# The shared folder sits next to the repository (CI clones it there), or next to a folder
# above it (a git worktree); MESHPILOT_SHARED names it outright.
SHARED = shared_folder()
ISTIO = SHARED / "conformance" / "istio"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
ENVOY_SAMPLE = int(os.environ.get("FUZZ_ENVOY_SAMPLE", "8"))

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, annotations: {meshpilot.io/app: "127.0.0.1:19081"}}
spec: {address: 10.0.0.21, ports: {http: 9080},
       labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 10.0.0.22, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
"""
VIEWS = ("reviews-v1.default", "reviews-v2.default", "istio=ingressgateway")

HOSTILE = [None, "", "x", 0, -1, 70000, 1.5, True, [], {}, ["a"], {"a": 1}, "*", "/",
           "a/b/c", "\x00", "9" * 50, "{", "[", "*.*", "(", "\\"]


def _mutate(node: Any, rng: random.Random) -> None:
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        roll = rng.random()
        if roll < 0.3:
            node[key] = rng.choice(HOSTILE)
        elif roll < 0.4:
            del node[key]
        elif roll < 0.45:
            node[rng.choice(["extra", "hosts", "spec", "match"])] = rng.choice(HOSTILE)
        else:
            _mutate(node[key], rng)
    elif isinstance(node, list) and node:
        index = rng.randrange(len(node))
        if rng.random() < 0.3:
            node[index] = rng.choice(HOSTILE)
        else:
            _mutate(node[index], rng)


def _samples() -> list[dict[str, Any]]:
    found = []
    for path in sorted(ISTIO.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and "istio.io" in str(document.get("apiVersion")):
                found.append(document)
    return found


def test_hostile_istio_documents_never_crash_the_load() -> None:
    samples = _samples()
    if not samples:
        print(f"skipped: Istio's samples are not at {ISTIO}")
        pytest.skip(f"Istio's samples are not at {ISTIO}")
    rng = random.Random(13)
    mesh = list(yaml.safe_load_all(MESH))
    refused = 0
    for _ in range(600):
        chosen = [copy.deepcopy(d) for d in rng.sample(samples, 3)]
        for document in chosen:
            for _ in range(rng.randrange(1, 4)):
                _mutate(document, rng)
        try:
            model = load_policy_text(yaml.safe_dump_all([*mesh, *chosen]))
        except PolicyError as e:
            refused += 1
            assert all(str(issue) for issue in e.issues)
            continue
        translation = Translation(model)
        for view in (*(s.name for s in model.services), *(g.name for g in model.gateways)):
            translation.snapshot(view)
    assert refused > 100  # the mutations do break documents


PERCENT = st.one_of(st.floats(0, 100, allow_nan=False), st.integers(0, 100))
STRING_MATCH = st.one_of(
    st.builds(lambda v: {"exact": v}, st.sampled_from(["a", "jason", "x y"])),
    st.builds(lambda v: {"prefix": v}, st.sampled_from(["/", "/api", "Bearer "])),
    st.builds(lambda v: {"regex": v}, st.sampled_from(["/v[0-9]+/.*", "(?i)a.*", ".*"])))
DESTINATION = st.fixed_dictionaries({"host": st.sampled_from(
    ["reviews", "reviews.default.svc.cluster.local"])}, optional={
    "subset": st.sampled_from(["v1", "v2", "v9"]), "port": st.just({"number": 9080})})
HTTP = st.fixed_dictionaries({"route": st.lists(st.fixed_dictionaries(
    {"destination": DESTINATION}, optional={"weight": st.integers(1, 100)}),
    min_size=1, max_size=3)}, optional={
    "match": st.lists(st.fixed_dictionaries({}, optional={
        "uri": STRING_MATCH, "headers": st.dictionaries(st.sampled_from(["end-user", "x-a"]),
                                                        STRING_MATCH, max_size=2),
        "queryParams": st.dictionaries(st.sampled_from(["q"]), STRING_MATCH, max_size=1),
        "method": st.builds(lambda m: {"exact": m}, st.sampled_from(["GET", "POST"])),
        "authority": STRING_MATCH, "gateways": st.just(["mesh"])}), min_size=1, max_size=2),
    "timeout": st.sampled_from(["0s", "1s", "250ms"]),
    "retries": st.fixed_dictionaries({"attempts": st.integers(0, 5)}, optional={
        "perTryTimeout": st.sampled_from(["1s", "100ms"]),
        "retryOn": st.sampled_from(["5xx", "gateway-error,503", "reset-before-request"])}),
    "fault": st.fixed_dictionaries({}, optional={
        "delay": st.fixed_dictionaries({"fixedDelay": st.just("1s")}, optional={
            "percentage": st.builds(lambda v: {"value": v}, PERCENT)}),
        "abort": st.fixed_dictionaries({"httpStatus": st.integers(200, 599)}, optional={
            "percentage": st.builds(lambda v: {"value": v}, PERCENT)})}),
    "mirror": DESTINATION,
    "headers": st.fixed_dictionaries({}, optional={"request": st.fixed_dictionaries({}, optional={
        "set": st.dictionaries(st.sampled_from(["x-b"]), st.sampled_from(["1", ""]),
                               max_size=1), "remove": st.just(["x-c"])})}),
    "rewrite": st.fixed_dictionaries({}, optional={"authority": st.just("internal")})})
POLICY = st.fixed_dictionaries({}, optional={
    "loadBalancer": st.one_of(
        st.builds(lambda s: {"simple": s}, st.sampled_from(["ROUND_ROBIN", "RANDOM",
                                                            "LEAST_REQUEST"])),
        st.just({"consistentHash": {"httpHeaderName": "x-user"}}),
        st.just({"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 65537}}})),
    "connectionPool": st.fixed_dictionaries({}, optional={
        "tcp": st.fixed_dictionaries({}, optional={"maxConnections": st.integers(1, 100)}),
        "http": st.fixed_dictionaries({}, optional={
            "http1MaxPendingRequests": st.integers(1, 10),
            "maxRequestsPerConnection": st.integers(0, 10)})}),
    "outlierDetection": st.fixed_dictionaries({}, optional={
        "consecutive5xxErrors": st.integers(0, 10), "interval": st.just("1s")}),
    "tls": st.builds(lambda m: {"mode": m}, st.sampled_from(["DISABLE", "ISTIO_MUTUAL"]))})
OPERATION = st.fixed_dictionaries({}, optional={
    "methods": st.just(["GET"]), "notPaths": st.just(["/admin*"]), "ports": st.just(["9080"]),
    "hosts": st.just(["*.example.com"]), "paths": st.just(["*/x", "/y"])})
SOURCE = st.fixed_dictionaries({}, optional={
    "principals": st.just(["cluster.local/ns/default/sa/a", "*"]),
    "notNamespaces": st.just(["ops"]), "ipBlocks": st.just(["10.0.0.0/8"])})
AUTHZ = st.fixed_dictionaries({"action": st.sampled_from(["ALLOW", "DENY"])}, optional={
    "rules": st.lists(st.fixed_dictionaries({}, optional={
        "from": st.lists(st.builds(lambda s: {"source": s}, SOURCE), max_size=2),
        "to": st.lists(st.builds(lambda o: {"operation": o}, OPERATION), max_size=2)}),
        max_size=2)})

validated: list[str] = []  # policies whose views Envoy accepted


@pytest.mark.envoy
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(http=st.lists(HTTP, min_size=1, max_size=3), policy=POLICY,
       authz=st.lists(AUTHZ, max_size=2), mtls=st.sampled_from(["STRICT", "PERMISSIVE",
                                                                 "DISABLE"]),
       at_gateway=st.booleans())
def test_what_loads_translates(http: list[Any], policy: dict[str, Any], authz: list[Any],
                               mtls: str, at_gateway: bool) -> None:
    documents = [
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "reviews"},
         "spec": {"host": "reviews", "trafficPolicy": policy,
                  "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                              {"name": "v2", "labels": {"version": "v2"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "reviews"},
         "spec": {"hosts": ["reviews"], "http": http,
                  "gateways": ["mesh", "edge"] if at_gateway else ["mesh"]}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default"}, "spec": {"mtls": {"mode": mtls}}},
        *({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": f"p{i}"}, "spec": spec} for i, spec in enumerate(authz))]
    text = MESH + "---\n" + yaml.safe_dump_all(documents)
    try:
        model = load_policy_text(text)
    except PolicyError as e:
        # Only the generated hash policies with a non-hashing balancer are refused.
        assert all(str(issue) for issue in e.issues)
        return
    translation = Translation(model)
    check = len(validated) < ENVOY_SAMPLE  # Envoy checks the first few that loaded
    for view in VIEWS:
        snapshot = translation.snapshot(view)
        if check:
            validate_config(static_bootstrap(snapshot_to_dict(snapshot)))
    if check:
        validated.append(text)

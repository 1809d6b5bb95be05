"""Fuzzing the whole pipeline: whatever the loader accepts, the translators turn into resources,
and Envoy accepts those resources. A policy that passes validation must never become a config
that Envoy would refuse (the loader's checks and Envoy's must agree)."""

from __future__ import annotations

import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from static_check import static_bootstrap
from test_policy_kinds import GATEWAY, REVIEWS

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.local.envoy_process import validate_config
from meshpilot.translators import Translation
from meshpilot.xds.render import snapshot_to_dict

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
ENVOY_SAMPLE = int(os.environ.get("FUZZ_ENVOY_SAMPLE", "12"))  # each ~0.2 s in Envoy

accepted: dict[str, dict] = {}  # snapshot version -> rendered view, in discovery order

# Mostly-valid rules: every feature, random combinations and awkward-but-legal values, so that
# most examples load and the translators and Envoy see the variety. (test_policy_kinds fuzzes
# the invalid side.)
PATHS = st.sampled_from(["/", "/a", "/a/b/", "/%20x", "/api/v1/", "/x-y_z.~"])
REGEXES = st.sampled_from(["/items/[0-9]+", "^/a(/.*)?$", "/(x|y)+", "/[^/]*\\.png", "/.{1,3}",
                           "(?i)/case", "/\\d{2,4}/\\w+"])
VALUE_MATCH = st.one_of(
    st.sampled_from(["v", "a b", "é", "*", "0"]),
    st.builds(lambda v: {"exact": v}, st.sampled_from(["x", "1"])),
    st.builds(lambda v: {"prefix": v}, st.sampled_from(["Bearer ", "a"])),
    st.builds(lambda v: {"regex": v}, REGEXES),
    st.just({"present": True}), st.just({"absent": True}))
DURATIONS = st.sampled_from(["1ms", "250ms", "1s", "1m", "0s", "1h30m"])
HEADER_OPS = st.fixed_dictionaries({}, optional={
    "add": st.dictionaries(st.sampled_from(["x-a", "x-b"]), st.sampled_from(["1", "a b"]),
                           max_size=2),
    "set": st.dictionaries(st.sampled_from(["x-c", "x-d"]), st.sampled_from(["2", ""]),
                           max_size=2),
    "remove": st.lists(st.sampled_from(["x-e", "x-f"]), max_size=2, unique=True)})
BACKEND = st.fixed_dictionaries({"service": st.just("reviews")}, optional={
    "subset": st.sampled_from(["v1", "v2"]), "weight": st.integers(0, 1000)})
ACTION = st.one_of(
    st.builds(lambda b: {"backends": b}, st.lists(BACKEND, min_size=1, max_size=3)),
    st.builds(lambda r: {"redirect": r}, st.fixed_dictionaries({}, optional={
        "scheme": st.sampled_from(["http", "https"]), "host": st.just("x.example.com"),
        "port": st.integers(1, 65535), "path": PATHS,
        "status": st.sampled_from([301, 302, 303, 307, 308])})),
    st.builds(lambda d: {"direct_response": d}, st.fixed_dictionaries(
        {"status": st.integers(200, 599)}, optional={"body": st.text(max_size=20)})))
MATCH = st.fixed_dictionaries({}, optional={
    "path": st.one_of(st.builds(lambda p: {"prefix": p}, PATHS),
                      st.builds(lambda p: {"exact": p}, PATHS),
                      st.builds(lambda r: {"regex": r}, REGEXES)),
    "headers": st.dictionaries(st.sampled_from(["x-h", "user-agent", "x-canary"]), VALUE_MATCH,
                               max_size=2),
    "query": st.dictionaries(st.sampled_from(["q", "page"]), VALUE_MATCH, max_size=2),
    "methods": st.lists(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), min_size=1,
                        max_size=3, unique=True)})


@st.composite
def rules(draw: st.DrawFn) -> dict:
    rule = {"match": draw(MATCH), **draw(ACTION)}
    if "backends" in rule:
        extra = draw(st.fixed_dictionaries({}, optional={
            "timeout": DURATIONS,
            "retries": st.fixed_dictionaries({"attempts": st.integers(1, 5)}, optional={
                "on": st.lists(st.sampled_from(["5xx", "reset", "connect-failure",
                                                "gateway-error", "unavailable"]),
                               min_size=1, max_size=3, unique=True),
                "per_try_timeout": DURATIONS}),
            "rewrite": st.fixed_dictionaries({}, optional={
                "host": st.just("internal.example.com"),
                "path": st.builds(lambda r: {"regex": r, "substitution": "/x"}, REGEXES)})}))
        rule.update(extra)
    for key in ("request_headers", "response_headers"):
        if draw(st.booleans()):
            rule[key] = draw(HEADER_OPS)
    return rule


@settings(deadline=None, max_examples=EXAMPLES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(rules(), min_size=1, max_size=4),
       st.lists(st.sampled_from(["a.example.com", "*.example.com", "*", "x.y"]), min_size=1,
                max_size=3, unique=True) | st.none())
def test_accepted_routes_always_translate(generated, hosts) -> None:
    document = {"kind": "Route", "name": "r", "gateway": "edge", "rules": generated}
    if hosts is not None:
        document["hosts"] = hosts
    try:
        model = load_policy_text(REVIEWS + "---\n" + GATEWAY + "---\n" + yaml.safe_dump(document))
    except PolicyError:
        return
    snapshot = Translation(model).snapshot("edge")  # must not raise for an accepted policy
    assert snapshot.counts().get("listeners") == 1
    if len(accepted) < 200:
        accepted.setdefault(snapshot.version, snapshot_to_dict(snapshot))


def test_envoy_accepts_what_the_loader_accepted(tmp_path) -> None:
    if not accepted:  # run alone: produce the accepted configs first
        test_accepted_routes_always_translate()
    # Most generated rules are valid by construction: too few accepted means a broken strategy.
    assert len(accepted) >= min(20, EXAMPLES // 5), len(accepted)
    # The most varied configs first: the biggest renderings carry the most features.
    sample = sorted(accepted.values(), key=lambda r: -len(str(r)))[:ENVOY_SAMPLE]
    for i, rendered in enumerate(sample):
        path = tmp_path / f"fuzz-{i}.yaml"
        path.write_text(yaml.safe_dump(static_bootstrap(rendered)))
        validate_config(path)

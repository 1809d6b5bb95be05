"""The policy loader, the YAML source under it, and `kind: EnvoyResources`."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshpilot.base import types
from meshpilot.base.errors import PolicyError, Position
from meshpilot.inputs import yamlsource
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.ir.model import Model

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

GOOD = f"""\
kind: EnvoyResources
name: extras
clusters:
  - name: web
    connectTimeout: 0.25s
    type: STATIC
    lb_policy: LEAST_REQUEST
    load_assignment:
      cluster_name: web
      endpoints:
        - lb_endpoints:
            - endpoint:
                address:
                  socket_address: {{address: 127.0.0.1, port_value: 8080}}
  - name: api
    type: EDS
    eds_cluster_config: {{eds_config: {{ads: {{}}}}}}
endpoints:
  - cluster_name: api
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 10.0.0.1, port_value: 80}}}}}}}}]}}]
listeners:
  - name: http
    address: {{socket_address: {{address: 0.0.0.0, port_value: 8080}}}}
    filter_chains:
      - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": {HCM}
              stat_prefix: ingress
              rds:
                route_config_name: local
                config_source: {{ads: {{}}, resource_api_version: V3}}
              http_filters:
                - name: envoy.filters.http.router
                  typed_config: {{"@type": {ROUTER}}}
routes:
  - name: local
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: web, timeout: 2s}}}}]
secrets:
  - name: server-cert
    tls_certificate:
      certificate_chain: {{filename: /etc/certs/cert.pem}}
      private_key: {{filename: /etc/certs/key.pem}}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    return [str(issue) for issue in raised.value.issues]


def text_issues(text: str, file: str = "raw.yaml") -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy_text(textwrap.dedent(text), file)
    return [str(issue) for issue in raised.value.issues]


def assert_owned_part(issue: str, prefix: str) -> None:
    """An issue whose message ends in a dependency's own words (PyYAML's, protobuf's): the
    position and the field path are meshpilot's promise, the wording after them is not."""
    assert issue.startswith(prefix), issue
    assert issue[len(prefix):].strip(), issue


def envoy_doc(body: str, name: str = "extras") -> str:
    return f"kind: EnvoyResources\nname: {name}\n" + textwrap.dedent(body)


# ---------------------------------------------------------------------------------------------
# Good documents.


def test_good_document_loads_every_type_into_its_message(tmp_path: Path) -> None:
    write(tmp_path, "raw.yaml", GOOD)
    model = load_policy(tmp_path)

    assert model.files == ("raw.yaml",)
    assert [(types.short_name(r.type_url), r.name) for r in model.raw] == [
        ("clusters", "api"), ("clusters", "web"), ("endpoints", "api"),
        ("listeners", "http"), ("routes", "local"), ("secrets", "server-cert")]
    by_name = {(r.type_url, r.name): r for r in model.raw}

    web = by_name[types.CLUSTER, "web"]
    assert isinstance(web.message, Cluster)
    assert web.message.connect_timeout.ToMilliseconds() == 250  # camelCase accepted
    assert web.message.lb_policy == Cluster.LEAST_REQUEST
    port = web.message.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert port.socket_address.port_value == 8080
    assert web.position == Position("raw.yaml", 4, 5)
    assert web.document == "extras"
    assert web.views is None

    assert isinstance(by_name[types.ENDPOINT, "api"].message, ClusterLoadAssignment)
    assert isinstance(by_name[types.ROUTE, "local"].message, RouteConfiguration)
    assert isinstance(by_name[types.SECRET, "server-cert"].message, Secret)


def test_any_typed_config_is_resolved_and_packed(tmp_path: Path) -> None:
    write(tmp_path, "raw.yaml", GOOD)
    listener = next(r for r in load_policy(tmp_path).raw if r.type_url == types.LISTENER)
    assert isinstance(listener.message, Listener)
    typed_config = listener.message.filter_chains[0].filters[0].typed_config
    assert typed_config.type_url == HCM

    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2,
    )
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "local"
    assert hcm.http_filters[0].typed_config.type_url == ROUTER


def test_views_restrict_resources(tmp_path: Path) -> None:
    write(tmp_path, "raw.yaml", envoy_doc("""\
        views: [edge, reviews]
        clusters: [{name: a}]
    """))
    (resource,) = load_policy(tmp_path).raw
    assert resource.views == frozenset({"edge", "reviews"})


def test_folder_rules(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", envoy_doc("clusters: [{name: b}]", name="b"))
    write(tmp_path, "a.yml", envoy_doc("clusters: [{name: a}]", name="a"))
    write(tmp_path, "sub/more.yaml", envoy_doc("clusters: [{name: c}]", name="c"))
    broken = "kind: [this is not loaded\n"
    write(tmp_path, ".hidden.yaml", broken)
    write(tmp_path, ".git/x.yaml", broken)
    write(tmp_path, "b.yaml~", broken)
    write(tmp_path, ".#b.yaml", broken)
    write(tmp_path, ".b.yaml.swp", broken)
    write(tmp_path, "notes.txt", broken)

    model = load_policy(tmp_path)
    assert model.files == ("a.yml", "b.yaml", "sub/more.yaml")
    assert [r.name for r in model.raw] == ["a", "b", "c"]
    assert model.raw[2].position.file == "sub/more.yaml"


def test_a_single_file_is_named_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, "one.yaml", envoy_doc("clusters: [{name: a}, {name: }]"))
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:3:23: EnvoyResources extras: clusters[1]: ")


def test_empty_folder_and_empty_documents_are_an_empty_model(tmp_path: Path) -> None:
    assert load_policy(tmp_path) == Model()
    write(tmp_path, "empty.yaml", "# nothing yet\n---\n---\n")
    assert load_policy(tmp_path) == Model(files=("empty.yaml",))


# ---------------------------------------------------------------------------------------------
# Errors, as the user sees them.


def test_unknown_field_names_path_position_and_suggestion(tmp_path: Path) -> None:
    write(tmp_path, "raw.yaml", GOOD.replace("port_value: 8080}", "port_valu: 8080}", 1))
    assert issues_of(tmp_path) == [
        "raw.yaml:14:56: EnvoyResources extras: clusters[0].load_assignment.endpoints[0]"
        ".lb_endpoints[0].endpoint.address.socket_address.port_valu: unknown field "
        '"port_valu" (did you mean "port_value"?)'
    ]


def test_unknown_field_without_a_close_match_lists_a_small_message(tmp_path: Path) -> None:
    assert text_issues(envoy_doc("""\
        clusters:
          - name: a
            eds_cluster_config: {service_name: x, zzz: 1}
    """)) == [
        "raw.yaml:5:43: EnvoyResources extras: clusters[0].eds_cluster_config.zzz: unknown "
        'field "zzz"; EdsClusterConfig has: eds_config, service_name'
    ]


def test_unknown_field_inside_typed_config(tmp_path: Path) -> None:
    write(tmp_path, "raw.yaml", GOOD.replace("stat_prefix: ingress", "stat_prefx: ingress"))
    assert issues_of(tmp_path) == [
        "raw.yaml:29:15: EnvoyResources extras: listeners[0].filter_chains[0].filters[0]"
        '.typed_config.stat_prefx: unknown field "stat_prefx" (did you mean "stat_prefix"?)'
    ]


def test_unknown_any_type(tmp_path: Path) -> None:
    assert text_issues(envoy_doc("""\
        listeners:
          - name: l
            filter_chains:
              - filters:
                  - name: f
                    typed_config: {"@type": type.googleapis.com/envoy.extensions.nope.v3.Nope}
    """)) == [
        "raw.yaml:8:37: EnvoyResources extras: listeners[0].filter_chains[0].filters[0]"
        '.typed_config.@type: unknown type "type.googleapis.com/envoy.extensions.nope.v3.Nope"'
        "; is it an Envoy v3 type?"
    ]


def test_packed_well_known_type_keys() -> None:
    assert text_issues(envoy_doc("""\
        clusters:
          - name: a
            typed_extension_protocol_options:
              x: {"@type": type.googleapis.com/google.protobuf.Duration, valu: 1s}
    """)) == [
        "raw.yaml:6:7: EnvoyResources extras: clusters[0].typed_extension_protocol_options.x: "
        'a packed Duration needs its "value"',
        "raw.yaml:6:66: EnvoyResources extras: clusters[0].typed_extension_protocol_options.x"
        '.valu: unknown field "valu" (did you mean "value"?)',
    ]


def test_unknown_enum_value_names_the_valid_ones() -> None:
    assert text_issues(envoy_doc("clusters: [{name: a, lb_policy: ROUND_ROBN}]")) == [
        'raw.yaml:3:33: EnvoyResources extras: clusters[0].lb_policy: unknown LbPolicy value '
        '"ROUND_ROBN" (did you mean "ROUND_ROBIN"?); expected one of: ROUND_ROBIN, '
        "LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV, CLUSTER_PROVIDED, LOAD_BALANCING_POLICY_CONFIG"
    ]


def test_protobuf_value_errors_are_mapped_to_the_field() -> None:
    issues = text_issues(envoy_doc("""\
        clusters:
          - name: a
            connect_timeout: 1x
          - name: b
            load_assignment:
              cluster_name: b
              endpoints:
                - lb_endpoints:
                    - endpoint: {address: {socket_address: {address: a, port_value: 80}}}
                    - endpoint: {address: {socket_address: {address: b, port_value: 99999999999}}}
    """))
    # The message after the field path is protobuf's own (json_format's) text.
    timeout, port = issues
    assert_owned_part(timeout, "raw.yaml:5:22: EnvoyResources extras: clusters[0].connect_timeout: ")
    assert "1x" in timeout
    assert_owned_part(port, "raw.yaml:12:77: EnvoyResources extras: clusters[1].load_assignment"
                      ".endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value: ")
    assert "99999999999" in port


def test_shape_oneof_and_twice_written_fields() -> None:
    issues = text_issues(envoy_doc("""\
        clusters:
          - name: a
            type: STATIC
            cluster_type: {name: custom}
            connect_timeout: 1s
            connectTimeout: 2s
            health_checks: {timeout: 1s}
            dns_resolvers: [null]
    """))
    assert issues == [
        'raw.yaml:6:5: EnvoyResources extras: clusters[0].cluster_type: "cluster_type" cannot '
        'be set together with "type" (both belong to oneof cluster_discovery_type)',
        'raw.yaml:8:5: EnvoyResources extras: clusters[0].connectTimeout: "connect_timeout" is '
        'already set (as "connect_timeout")',
        "raw.yaml:9:20: EnvoyResources extras: clusters[0].health_checks: expected a list, "
        "found a mapping",
        "raw.yaml:10:21: EnvoyResources extras: clusters[0].dns_resolvers[0]: null is not "
        "allowed in a list",
    ]


def test_names_are_required_and_unique_across_the_folder(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", envoy_doc("clusters: [{name: web}, {name: ''}, {type: STATIC}]"))
    write(tmp_path, "b.yaml", envoy_doc("""\
        clusters:
          - name: web
        endpoints:
          - cluster_name: web
    """, name="more"))
    assert issues_of(tmp_path) == [
        'a.yaml:3:25: EnvoyResources extras: clusters[1]: a cluster needs a non-empty "name"',
        'a.yaml:3:37: EnvoyResources extras: clusters[2]: a cluster needs a non-empty "name"',
        'b.yaml:4:5: EnvoyResources more: clusters[0].name: duplicate cluster name "web"; '
        "first defined at a.yaml:3:13",
    ]


def test_a_name_must_be_a_string() -> None:
    assert text_issues(envoy_doc("endpoints: [{cluster_name: 5}, 7]")) == [
        "raw.yaml:3:28: EnvoyResources extras: endpoints[0].cluster_name: a name must be a "
        "string, found a number",
        "raw.yaml:3:32: EnvoyResources extras: endpoints[1]: expected a ClusterLoadAssignment "
        "(a mapping), found a number",
    ]


def test_duplicate_documents_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", envoy_doc("clusters: [{name: a}]"))
    write(tmp_path, "b.yaml", envoy_doc("clusters: [{name: b}]"))
    assert issues_of(tmp_path) == [
        'b.yaml:2:7: EnvoyResources extras: name: another EnvoyResources is named "extras" '
        "(at a.yaml:2:1)"
    ]


def test_unknown_kind_suggests_a_known_one(tmp_path: Path) -> None:
    write(tmp_path, "raw.yaml", "kind: EnvoyResource\nname: x\n")
    assert issues_of(tmp_path) == [
        'raw.yaml:1:7: kind: unknown kind "EnvoyResource" (did you mean "EnvoyResources"?)'
    ]


def test_document_shape_rules() -> None:
    assert text_issues("""\
        - just a list
        ---
        name: x
        ---
        kind: EnvoyResources
        ---
        kind: EnvoyResources
        name: y
        cluster: []
        views: []
    """) == [
        "raw.yaml:1:1: a policy document must be a mapping with kind and name",
        'raw.yaml:3:1: kind: missing "kind"',
        'raw.yaml:5:1: EnvoyResources: name: missing "name"',
        'raw.yaml:9:1: EnvoyResources y: cluster: unknown key "cluster" (did you mean '
        '"clusters"?)',
        "raw.yaml:10:8: EnvoyResources y: views: expected a non-empty list of view names (leave "
        "views out to send these resources to every view)",
    ]


def test_yaml_syntax_error_position(tmp_path: Path) -> None:
    write(tmp_path, "raw.yaml", "kind: EnvoyResources\nname: x\nclusters: [{name: a}\n")
    write(tmp_path, "tab.yaml", "kind: EnvoyResources\n\tname: x\n")
    raw, tab = issues_of(tmp_path)
    # The position is meshpilot's promise; what follows "YAML syntax error:" is PyYAML's text.
    assert_owned_part(raw, "raw.yaml:4:1: YAML syntax error: ")
    assert_owned_part(tab, "tab.yaml:2:1: YAML syntax error: ")


def test_duplicate_key_is_reported_at_the_second(tmp_path: Path) -> None:
    write(tmp_path, "raw.yaml", envoy_doc("clusters:\n  - name: a\n    name: b\n"))
    assert issues_of(tmp_path) == ['raw.yaml:5:5: duplicate key "name" (first written at 4:5)']


def test_every_issue_of_every_file_is_reported_in_file_order(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", envoy_doc("clusters: [{name: a, typo: 1}]", name="b"))
    write(tmp_path, "a.yaml", "kind: Nope\nname: a\n---\nkind: EnvoyResources\nname: [x]\n")
    issues = issues_of(tmp_path)
    assert [issue.split(": ")[0] for issue in issues] == ["a.yaml:1:7", "a.yaml:5:7",
                                                          "b.yaml:3:22"]


def test_anchors_aliases_and_merge_keys_work() -> None:
    model = load_policy_text(envoy_doc("""\
        clusters:
          - &base {name: a, connect_timeout: 1s, type: STATIC}
          - <<: *base
            name: b
    """))
    assert [(r.name, r.message.connect_timeout.seconds) for r in model.raw] == [("a", 1),
                                                                                ("b", 1)]


# ---------------------------------------------------------------------------------------------
# Secrets stay secret.

SECRET = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"


@pytest.mark.parametrize("body", [
    f"secrets: [{{name: k, tls_certificate: {{private_key: {SECRET}}}}}]",
    f"secrets: [{{name: k, tls_certificate: {{private_key: [{SECRET}]}}}}]",
    f"secrets: [{{name: k, tls_certificate: {{private_key: {{inline_string: {SECRET}, "
    f"inline_bytes: {SECRET}}}}}}}]",
    f"secrets: [{{name: k, tls_certificate: {{private_key: {{{SECRET}: 1}}}}}}]",
    f'secrets: [{{name: k, tls_certificate: {{private_key: {{"-----BEGIN {SECRET}": 1}}}}}}]',
    f"secrets: [{{name: k, validation_context: {{max_verify_depth: {SECRET}}}}}]",
    f"secrets: [{{name: k, validation_context: {{trust_chain_verification: {SECRET}}}}}]",
    f"secrets: [{{name: k, generic_secret: {{secret: {{inline_bytes: [{SECRET}]}}}}}}]",
    f"secrets: [{{name: k, tls_certificate: {{private_key: {{inline_string: {SECRET}}}}}}}, "
    f"{{name: k, tls_certificate: {{private_key: {{inline_string: {SECRET}}}}}}}]",
    f"secrets: [{{name: k, session_ticket_keys: {{keys: {{inline_string: {SECRET}}}}}}}]",
])
def test_secret_values_never_appear_in_errors(body: str) -> None:
    issues = text_issues(envoy_doc(body))
    assert issues
    for issue in issues:
        assert SECRET[:12] not in issue
        assert "BEGIN" not in issue


# ---------------------------------------------------------------------------------------------
# Hostile and broken input.


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ["kind: EnvoyResources", "name: x", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    # Refused by counting nodes as they are built, so the aliases never expand (10^10 nodes
    # would not fit in memory): the limit's message is the proof, not a stopwatch.
    issues = text_issues("\n".join(lines) + "\n")
    assert issues[0].startswith("raw.yaml:")
    assert "more than 1000000 YAML nodes in this file" in issues[0]


def test_alias_expansion_is_budgeted_per_file_not_per_document() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]" for i in range(1, 6)]
    document = "\n".join(lines) + "\n"  # about 300,000 nodes: fine once, not four times
    issues = text_issues("---\n".join([document] * 4))
    assert "more than 1000000 YAML nodes in this file" in issues[-1]


def test_recursive_alias_is_refused() -> None:
    assert text_issues("a: &a [*a]\n") == [
        'raw.yaml:1:1: kind: missing "kind"',
        "raw.yaml:1:8: unknown anchor *a (an alias can only refer to an anchor defined, and "
        "complete, before it)",
    ]


def test_deep_nesting_is_refused_at_its_position_without_crashing() -> None:
    # Whichever layer refuses first, PyYAML's own depth limit or meshpilot's at 128 levels, the
    # document is refused once, at a place inside it; only the second's wording is meshpilot's.
    flow = "[" * 200_000
    block = "a:\n" + "".join("  " * i + "- \n" for i in range(1, 300))
    mixed = "{a: " * 300
    for text in (flow, block, mixed):
        (issue,) = text_issues(text)
        position = re.match(r"raw\.yaml:(\d+):(\d+): ", issue)
        assert position, issue
        line, column = int(position[1]), int(position[2])
        assert 1 <= line <= text.count("\n") + 1
        assert 1 <= column <= len(text.splitlines()[line - 1]) + 1
    # Where meshpilot's limit is the one that fires, it says so.
    assert "nested more than 128 levels deep" in text_issues(mixed)[0]


def test_unreadable_files_are_issues(tmp_path: Path) -> None:
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "missing.yaml")
    os.mkfifo(tmp_path / "fifo.yaml")
    write(tmp_path, "latin1.yaml", "kind: x\n")
    (tmp_path / "latin1.yaml").write_bytes(b"kind: EnvoyResources\nname: caf\xe9\n")
    assert issues_of(tmp_path) == [
        "fifo.yaml:1:1: not a regular file",
        "gone.yaml:1:1: cannot read file: No such file or directory",
        "latin1.yaml:2:10: file is not valid UTF-8",
    ]


def test_large_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsource, "MAX_FILE_BYTES", 64)
    write(tmp_path, "big.yaml", envoy_doc("clusters: [{name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}]"))
    assert issues_of(tmp_path) == ["big.yaml:1:1: file is larger than 64 bytes"]


def test_missing_policy_path(tmp_path: Path) -> None:
    assert issues_of(tmp_path / "nope") == [f"policy path {tmp_path / 'nope'} does not exist"]


def test_loading_ten_thousand_resources(tmp_path: Path) -> None:
    lines = ["kind: EnvoyResources", "name: many", "clusters:"]
    lines += [f"  - {{name: c{i}, connect_timeout: 1s, type: STRICT_DNS}}" for i in range(10_000)]
    write(tmp_path, "many.yaml", "\n".join(lines) + "\n")
    # How fast: benchmarks/translation.py ("raw clusters 10,000"), not a timed assertion.
    assert len(load_policy(tmp_path).raw) == 10_000


# ---------------------------------------------------------------------------------------------
# Fuzzing: whatever the input, the loader answers with a Model or a PolicyError.

FUZZ = settings(deadline=None, max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def load_anything(text: str) -> Model | None:
    try:
        return load_policy_text(text)
    except PolicyError as error:
        assert error.issues
        assert all(issue.position is not None for issue in error.issues)
        return None


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("ab:- \n\t[]{},&*!|>'\"#%@`?<~0.9\x00é")),
               max_size=200))
def test_fuzz_random_text(text: str) -> None:
    load_anything(text)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD)), st.integers(0, 8),
                          st.text(max_size=4)), min_size=1, max_size=6))
def test_fuzz_mutated_good_document(edits: list[tuple[int, int, str]]) -> None:
    text = GOOD
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut:]
    load_anything(text)


FIELD_NAMES = ["name", "type", "connect_timeout", "load_assignment", "endpoints", "lb_endpoints",
               "endpoint", "address", "socket_address", "port_value", "lb_policy",
               "filter_chains", "filters", "typed_config", "@type", "virtual_hosts", "domains",
               "routes", "match", "prefix", "route", "cluster", "tls_certificate", "private_key",
               "inline_string", "metadata", "filter_metadata", "cluster_name", "connectTimeout",
               "health_checks", "http_filters", "stat_prefix", "rds", "x"]
TYPE_URLS = [HCM, ROUTER, "type.googleapis.com/google.protobuf.Duration",
             "type.googleapis.com/envoy.nope.v3.X", "type.googleapis.com/os.path.X", "junk"]
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(TYPE_URLS)
           | st.sampled_from(["1s", "STATIC", "ROUND_ROBIN", "", "0.0.0.0", "80"])
           | st.text(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5), inner, max_size=4),
    max_leaves=25,
)


# Mostly valid resources, so the fuzz also reaches protobuf and the "nothing dropped" check.
NEARLY_VALID = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=3)},
    optional={"connect_timeout": st.sampled_from(["1s", "1x", 1, None]),
              "type": st.sampled_from(["STATIC", "STRICT_DNS", "STATC", 3]),
              "metadata": st.fixed_dictionaries({"filter_metadata": st.dictionaries(
                  st.text(max_size=3), st.dictionaries(st.text(max_size=3), VALUES))}),
              "filter_chains": st.lists(st.fixed_dictionaries(
                  {"filters": st.lists(st.fixed_dictionaries(
                      {"name": st.just("f"), "typed_config": VALUES}), max_size=2)}),
                  max_size=2)},
)


@FUZZ
@given(st.sampled_from(["clusters", "endpoints", "listeners", "routes", "secrets", "views"]),
       st.lists(VALUES | NEARLY_VALID, max_size=3))
def test_fuzz_random_envoy_resources(key: str, items: list[object]) -> None:
    document = {"kind": "EnvoyResources", "name": "fuzz", key: items}
    model = load_anything(yaml.safe_dump(document))
    if model is not None and key != "views":  # nothing is dropped without an issue
        assert len(model.raw) == len(items)

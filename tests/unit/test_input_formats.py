"""Input formats side by side: documents are told apart by `apiVersion` and `kind`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytest

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.assembly import finish
from meshpilot.inputs.context import DocumentContext, LoadContext, ModelPart, ParsedDocument
from meshpilot.inputs.documents import load_documents
from meshpilot.inputs.formats import DocumentParser, DocumentType, FormatRegistry
from meshpilot.inputs.loader import load_policy_text
from meshpilot.inputs.native.format import NATIVE
from meshpilot.inputs.yamlsource import Located, parse_yaml
from meshpilot.ir.model import Gateway, GatewayListener, Model

K8S_GATEWAY_API = "gateway.networking.k8s.io/v1"


def _k8s_gateway(document: Located, ctx: DocumentContext) -> Iterable[ModelPart]:
    """A stand-in for a Gateway API reader: enough to show it coexists with native kinds."""
    spec = document.value.get("spec", {})
    listeners = tuple(GatewayListener(name=item["name"], port=item["port"])
                      for item in spec.get("listeners", []))
    return [Gateway(name=ctx.name or "", position=document.position, listeners=listeners)]


@dataclass(frozen=True)
class _K8sFormat:
    api_version: str | None = K8S_GATEWAY_API
    name_path: tuple[str, ...] = ("metadata", "name")
    parsers: Mapping[str, DocumentParser] = field(
        default_factory=lambda: {"Gateway": _k8s_gateway})


def _load(text: str, formats: FormatRegistry) -> Model:
    load = LoadContext()
    parsed: list[ParsedDocument] = []
    documents, issues = parse_yaml(text, "policy.yaml")
    load.issues.extend(issues)
    load_documents(documents, load, parsed, formats)
    return finish(load, parsed, ("policy.yaml",))


def test_native_and_other_formats_share_a_folder() -> None:
    formats = FormatRegistry((NATIVE, _K8sFormat()))
    model = _load(f"""\
kind: Gateway
name: native
listeners: [{{name: http, port: 8080}}]
---
apiVersion: {K8S_GATEWAY_API}
kind: Gateway
metadata: {{name: upstream}}
spec: {{listeners: [{{name: http, port: 9090}}]}}
""", formats)
    assert [(g.name, g.listeners[0].port) for g in model.gateways] == [
        ("native", 8080), ("upstream", 9090)]
    assert formats.parser_of(DocumentType(K8S_GATEWAY_API, "HTTPRoute")) is None
    assert formats.kinds_of(K8S_GATEWAY_API) == ["Gateway"]


def test_a_name_outside_the_top_level_is_checked_where_the_format_keeps_it() -> None:
    formats = FormatRegistry((NATIVE, _K8sFormat()))
    with pytest.raises(PolicyError) as error:
        _load(f"apiVersion: {K8S_GATEWAY_API}\nkind: Gateway\nmetadata: {{}}\n", formats)
    assert str(error.value) == 'policy.yaml:3:11: Gateway: metadata.name: missing "metadata.name"'


def test_an_api_version_no_format_claims_is_refused_at_its_value() -> None:
    with pytest.raises(PolicyError) as error:
        _load(f"apiVersion: {K8S_GATEWAY_API}\nkind: Gateway\nmetadata: {{name: edge}}\n",
              FormatRegistry((NATIVE,)))
    assert str(error.value) == (
        f'policy.yaml:1:13: apiVersion: unknown apiVersion "{K8S_GATEWAY_API}"; no input '
        "format reads it (meshpilot's own kinds are written without apiVersion)")
    # Another API group's apiVersion is not suggested (Istio's for an unknown group close to
    # it); a version typo within a group is.
    with pytest.raises(PolicyError) as error:
        load_policy_text("apiVersion: networking.example.io/v1\nkind: Gateway\n"
                         "metadata: {name: edge}\n")
    message = str(error.value)
    assert "; known apiVersions: " in message and "did you mean" not in message
    with pytest.raises(PolicyError) as error:
        load_policy_text("apiVersion: networking.istio.io/v2\nkind: Gateway\n"
                         "metadata: {name: edge}\n")
    assert '(did you mean "networking.istio.io/v1' in str(error.value)


def test_an_unknown_api_version_suggests_the_closest_one_read() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text("apiVersion: gateway.networking.k8s.io/v2\nkind: Gateway\n"
                         "metadata: {name: edge}\n")
    assert str(error.value).startswith(
        'policy.yaml:1:13: apiVersion: unknown apiVersion "gateway.networking.k8s.io/v2" (did '
        'you mean "gateway.networking.k8s.io/v1')


def test_an_api_version_must_be_a_string() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text("apiVersion: 1\nkind: Gateway\nname: edge\n")
    assert str(error.value) == ('policy.yaml:1:13: apiVersion: "apiVersion" must be a '
                                "non-empty string")


def test_a_kind_unknown_to_its_format_lists_that_formats_kinds() -> None:
    formats = FormatRegistry((NATIVE, _K8sFormat()))
    with pytest.raises(PolicyError) as error:
        _load(f"apiVersion: {K8S_GATEWAY_API}\nkind: Mesh\nmetadata: {{name: m}}\n", formats)
    assert str(error.value) == 'policy.yaml:2:7: kind: unknown kind "Mesh"; known kinds: Gateway'


def test_two_formats_may_not_claim_one_api_version() -> None:
    with pytest.raises(ValueError, match="two input formats"):
        FormatRegistry((NATIVE, _K8sFormat(api_version=None)))

"""External authorization: a Route's or a rule's `ext_authz`, by Envoy's ext_authz filter.

On a gateway listener with a Route that uses it: one filter per distinct authorization service
and settings (the service is listener-level config), each asked last, for requests nothing
local refused. A rule naming another service than its Route switches the Route's filter off.
The service's cluster goes to the view.

An `ext_authz` with `only` rules is Istio's CUSTOM action, built as Istio's RBAC builder
builds it (`CUSTOM_FEATURE`, before the RBAC filters: Istio asks the provider before DENY and
ALLOW): an RBAC filter whose shadow rules refuse nothing but name the rule a request matched
in its dynamic metadata (`rbac.shadow`), then the same ext_authz filter with
`filter_enabled_metadata` on that name, so only those requests are sent to the service. On a
gateway listener (per Route or rule) and on a sidecar's inbound (`inbound_config`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, cast

from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.core.v3.http_uri_pb2 import HttpUri
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import (
    BufferSettings,
    ExtAuthz,
    ExtAuthzPerRoute,
    HttpService,
)
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC, RBACPerRoute
from envoy.type.matcher.v3.metadata_pb2 import MetadataMatcher
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import ListStringMatcher, StringMatcher
from envoy.type.matcher.v3.value_pb2 import ValueMatcher
from google.protobuf.message import Message

from meshpilot.ir.model import ExtAuthz as ExtAuthzSpec
from meshpilot.ir.model import Route, Rule, Security, StringMatch
from meshpilot.translators import names
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
    securities,
    security_inputs,
)
from meshpilot.translators.httpfilters.rbac import (
    RBAC_METADATA,
    SHADOW_POLICY,
    SHADOW_POLICY_KEY,
    shadow,
)
from meshpilot.translators.protos import duration

EXT_AUTHZ = "envoy.filters.http.ext_authz"
RBAC_CUSTOM = "envoy.filters.http.rbac/custom"  # the shadow rules that pick CUSTOM's requests


class ExtAuthzFeature(HttpFeature):
    """`selected` False: the ext_authz settings without `only`, asked last; True: Istio's
    CUSTOM (with `only`), the shadow RBAC filter and the ext_authz filter it switches on."""

    route_inputs = staticmethod(security_inputs)

    def __init__(self, selected: bool):
        self.selected = selected

    def _mine(self, spec: ExtAuthzSpec | None) -> bool:
        return spec is not None and (spec.only is not None) == self.selected

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        specs = [s.ext_authz for route in chain.routes for s in securities(route)]
        specs.append(chain.inbound_ext_authz)
        services = {ext_authz_filter(spec): spec for spec in specs
                    if spec is not None and self._mine(spec)}
        found = [http_filter(name, ext_authz(services[name]), disabled=True)
                 for name in sorted(services)]
        if found and self.selected:
            found.insert(0, http_filter(RBAC_CUSTOM, RBAC(), disabled=True))
        return found

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        spec = route.security.ext_authz
        return _on(spec, detected_client=True) if self._mine(spec) else {}

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        spec = rule.security.ext_authz
        if spec is None or not self._mine(spec):
            return {}
        configs: dict[str, Message] = dict(_on(spec, detected_client=True))
        routes = route.security.ext_authz
        if routes is not None and ext_authz_filter(routes) != ext_authz_filter(spec):
            configs[ext_authz_filter(routes)] = ExtAuthzPerRoute(disabled=True)
        return configs

    def services(self, security: Security) -> Iterable[str]:
        spec = security.ext_authz
        return (spec.service,) if spec is not None and self._mine(spec) else ()


FEATURE = ExtAuthzFeature(selected=False)
CUSTOM_FEATURE = ExtAuthzFeature(selected=True)


def _on(spec: ExtAuthzSpec, detected_client: bool = False) -> dict[str, Message]:
    """The per-route configs that switch `spec`'s filters on (with `only`, its shadow rules)."""
    configs: dict[str, Message] = {ext_authz_filter(spec): _enabled()}
    if spec.only is not None:
        configs[RBAC_CUSTOM] = RBACPerRoute(rbac=shadow(spec.only,
                                                        detected_client=detected_client))
    return configs


def inbound_config(spec: ExtAuthzSpec | None) -> dict[str, Message]:
    """A sidecar's inbound virtual host's config: its provider (rules' callers as SPIFFE
    IDs), switched on."""
    return {} if spec is None else _on(spec)


def _enabled() -> ExtAuthzPerRoute:
    return ExtAuthzPerRoute(check_settings={})


def ext_authz_filter(spec: ExtAuthzSpec) -> str:
    """The filter's name: one per authorization service and settings."""
    settings = f"{spec.protocol}/{spec.timeout}/{spec.failure_mode_allow}"
    extra = (spec.path_prefix, spec.send_headers, spec.upstream_headers, spec.client_headers,
             spec.client_headers_on_success)
    if any(extra):  # (names of filters without them stay as they were)
        settings += repr(extra)
    # (the rules of `only` are per-route config: they do not make another filter)
    istio = (spec.only is not None, spec.status_on_error, spec.add_headers, spec.request_body)
    if any(istio):
        settings += repr(istio)
    digest = hashlib.blake2b(settings.encode(), digest_size=4).hexdigest()
    return f"{EXT_AUTHZ}/{spec.service}/{digest}"


def ext_authz(spec: ExtAuthzSpec) -> ExtAuthz:
    cluster = names.cluster(spec.service)
    # Every request header goes to the service (Envoy's default for HTTP is only a few),
    # unless `send_headers` names them (Envoy adds Host, Method, Path, Content-Length and
    # Authorization itself).
    sent = ([StringMatcher(safe_regex=RegexMatcher(regex=".*"))] if not spec.send_headers
            else _names(spec.send_headers))
    config = ExtAuthz(failure_mode_allow=spec.failure_mode_allow,
                      transport_api_version=ApiVersion.V3,
                      allowed_headers=ListStringMatcher(patterns=sent))
    if spec.only is not None:  # asked only about the requests the shadow rules picked
        config.filter_enabled_metadata.CopyFrom(MetadataMatcher(
            filter=RBAC_METADATA, path=[MetadataMatcher.PathSegment(key=SHADOW_POLICY_KEY)],
            value=ValueMatcher(string_match=StringMatcher(prefix=SHADOW_POLICY))))
    if spec.status_on_error is not None:
        config.status_on_error.code = cast(Any, spec.status_on_error)
    if spec.request_body is not None:
        body = spec.request_body
        config.with_request_body.CopyFrom(BufferSettings(
            max_request_bytes=body.max_bytes, allow_partial_message=body.allow_partial,
            pack_as_bytes=body.pack_as_bytes))
    if spec.protocol == "grpc":
        config.grpc_service.CopyFrom(GrpcService(
            envoy_grpc=GrpcService.EnvoyGrpc(cluster_name=cluster),
            timeout=duration(spec.timeout)))
    else:
        service = HttpService(server_uri=HttpUri(
            uri=f"http://{spec.service}", cluster=cluster, timeout=duration(spec.timeout)),
            path_prefix=spec.path_prefix)
        if spec.add_headers:
            service.authorization_request.headers_to_add.extend(
                HeaderValue(key=name, value=value) for name, value in spec.add_headers)
        # What of its answer reaches the backend (on the request) and the client; gRPC
        # services say that in their CheckResponse instead. Only lists written are set: an
        # empty allowed_client_headers would send the client none of a denial's headers.
        lists = (("allowed_upstream_headers", spec.upstream_headers),
                 ("allowed_client_headers", spec.client_headers),
                 ("allowed_client_headers_on_success", spec.client_headers_on_success))
        for field_name, matches in lists:
            if matches:
                getattr(service.authorization_response, field_name).patterns.extend(
                    _names(matches))
        config.http_service.CopyFrom(service)
    return config


def _names(matches: Iterable[StringMatch]) -> list[StringMatcher]:
    # Header names ignore case; Envoy compares them as written otherwise.
    return [StringMatcher(ignore_case=True, **{m.kind: m.value}) for m in matches]

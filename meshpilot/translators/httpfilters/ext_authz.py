"""External authorization: a Route's or a rule's `ext_authz`, by Envoy's ext_authz filter.

On a gateway listener with a Route that uses it: one filter per distinct authorization service
and settings (the service is listener-level config), each asked last, for requests nothing
local refused. A rule naming another service than its Route switches the Route's filter off.
The service's cluster goes to the view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.core.v3.http_uri_pb2 import HttpUri
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import (
    ExtAuthz,
    ExtAuthzPerRoute,
    HttpService,
)
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import ListStringMatcher, StringMatcher
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
from meshpilot.translators.protos import duration

EXT_AUTHZ = "envoy.filters.http.ext_authz"


class ExtAuthzFeature(HttpFeature):
    route_inputs = staticmethod(security_inputs)

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        services = {ext_authz_filter(s.ext_authz): s.ext_authz
                    for route in chain.routes for s in securities(route) if s.ext_authz}
        return [http_filter(name, ext_authz(services[name]), disabled=True)
                for name in sorted(services)]

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        spec = route.security.ext_authz
        return {} if spec is None else {ext_authz_filter(spec): _enabled()}

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        spec = rule.security.ext_authz
        if spec is None:
            return {}
        configs: dict[str, Message] = {ext_authz_filter(spec): _enabled()}
        routes = route.security.ext_authz
        if routes is not None and ext_authz_filter(routes) != ext_authz_filter(spec):
            configs[ext_authz_filter(routes)] = ExtAuthzPerRoute(disabled=True)
        return configs

    def services(self, security: Security) -> Iterable[str]:
        return () if security.ext_authz is None else (security.ext_authz.service,)


FEATURE = ExtAuthzFeature()


def _enabled() -> ExtAuthzPerRoute:
    return ExtAuthzPerRoute(check_settings={})


def ext_authz_filter(spec: ExtAuthzSpec) -> str:
    """The filter's name: one per authorization service and settings."""
    settings = f"{spec.protocol}/{spec.timeout}/{spec.failure_mode_allow}"
    extra = (spec.path_prefix, spec.send_headers, spec.upstream_headers, spec.client_headers,
             spec.client_headers_on_success)
    if any(extra):  # (names of filters without them stay as they were)
        settings += repr(extra)
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
    if spec.protocol == "grpc":
        config.grpc_service.CopyFrom(GrpcService(
            envoy_grpc=GrpcService.EnvoyGrpc(cluster_name=cluster),
            timeout=duration(spec.timeout)))
    else:
        service = HttpService(server_uri=HttpUri(
            uri=f"http://{spec.service}", cluster=cluster, timeout=duration(spec.timeout)),
            path_prefix=spec.path_prefix)
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

"""What one HTTP feature tells the chain builders, and what a chain is built for.

A feature is an `HttpFeature` whose hooks say everything the rest of the translators need to
know about it; each hook's default is "nothing", so a module overrides only what it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf.message import Message

from meshpilot.ir.model import (
    Authorization,
    Compression,
    Decompression,
    ExtAuthz,
    Jwt,
    Route,
    Rule,
    Security,
)
from meshpilot.translators.protos import pack

HttpFilter = hcm.HttpFilter


@dataclass(frozen=True, slots=True)
class ChainInputs:
    """What one HTTP connection manager serves: all a feature looks at to pick its filters.

    The three chains are a gateway listener (`ChainInputs.gateway`), a sidecar's outbound
    listeners (`ChainInputs.sidecar_outbound`) and a sidecar's inbound listener
    (`ChainInputs.sidecar_inbound`).
    """

    # Routes' virtual hosts over RDS: features configured per route belong in the chain.
    serves_routes: bool
    # The Routes whose request security the chain enforces: a gateway listener's (the loader
    # refuses request security on a Route attached to a service).
    routes: tuple[Route, ...] = ()
    compression: Compression | None = None  # a gateway listener's `compression`
    callers: Authorization | None = None  # a sidecar's `authorization`, callers as SPIFFE IDs
    inbound: bool = False  # a sidecar's inbound listener (its route configuration over RDS)
    inbound_jwt: tuple[str, Jwt] | None = None  # (its name, the sidecar's jwt)
    decompression: Decompression | None = None  # a gateway listener's `decompression`
    denied: bool = False  # a sidecar with DENY rules: their RBAC filter too
    audited: bool = False  # a sidecar with AUDIT rules: their RBAC filter too
    inbound_ext_authz: ExtAuthz | None = None  # a sidecar's (Istio's CUSTOM provider)
    # A sidecar's Host-routed outbound port passing unknown hosts through (its catch-all
    # virtual host: `dynamic_forward_proxy.py`).
    passthrough: bool = False

    @classmethod
    def gateway(cls, routes: Iterable[Route], compression: Compression | None,
                decompression: Decompression | None = None) -> ChainInputs:
        return cls(serves_routes=True, routes=tuple(routes), compression=compression,
                   decompression=decompression)

    @classmethod
    def sidecar_outbound(cls, passthrough: bool = False) -> ChainInputs:
        return cls(serves_routes=True, passthrough=passthrough)

    @classmethod
    def sidecar_inbound(cls, callers: Authorization | None,
                        jwt: tuple[str, Jwt] | None = None,
                        denied: bool = False, audited: bool = False,
                        ext_authz: ExtAuthz | None = None) -> ChainInputs:
        """One route to the local application, over RDS: the callers' authorization is its
        per-route config, so an edit reaches open connections (no new listener)."""
        return cls(serves_routes=False, callers=callers, inbound=True, inbound_jwt=jwt,
                   denied=denied, audited=audited, inbound_ext_authz=ext_authz)


class HttpFeature:
    """One HTTP feature. Subclasses override the hooks they need."""

    # What of a Route the feature's listener-level config reads (None: nothing): a gateway
    # listener whose Routes changed only elsewhere is not built again (`gateway.py`). Features
    # reading the same things share one function, so it is called once per Route.
    route_inputs: Callable[[Route], object] | None = None

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        """Its filters in a chain, in the order they run (usually none or one)."""
        return []

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        """Filter name -> config, for the virtual host of `route` (typed_per_filter_config)."""
        return {}

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        """Filter name -> config, for route entry `entry` of `rule` (typed_per_filter_config),
        which replaces the virtual host's config of the same filter."""
        return {}

    def services(self, security: Security) -> Iterable[str]:
        """The Services whose clusters a view needs for this feature of `security`."""
        return ()

    def secrets(self, chain: ChainInputs) -> list[Secret]:
        """The SDS Secrets its filters in `chain` name (sent with the listener)."""
        return []


def http_filter(name: str, config: Message, disabled: bool = False) -> HttpFilter:
    return HttpFilter(name=name, typed_config=pack(config), disabled=disabled)


def securities(route: Route) -> Iterator[Security]:
    """The Route's security, then each rule's, skipping those that set nothing."""
    if route.security:
        yield route.security
    for rule in route.rules:
        if rule.security:
            yield rule.security


def security_inputs(route: Route) -> tuple[object, ...]:
    """What the request security filters read of a Route: its name (JWT requirements are named
    after it), its and its rules' security, and how many matches each rule has (entries)."""
    return (route.name, route.security,
            tuple((rule.security, len(rule.matches)) for rule in route.rules))


class PerRouteSecurity(HttpFeature):
    """A request-security feature that one Security field drives (`setting`): its filter sits
    disabled in a chain where some Route or rule sets that field (`disabled_filter`, given the
    first such setting), and the virtual host or route entry that sets it switches it on with
    `per_route(setting)`. The shape of api_key_auth, basic_auth and local_ratelimit."""

    route_inputs = staticmethod(security_inputs)

    def setting(self, security: Security) -> Any:
        raise NotImplementedError

    def disabled_filter(self, first: Any) -> HttpFilter:
        raise NotImplementedError

    def per_route(self, setting: Any) -> Mapping[str, Message]:
        raise NotImplementedError

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        first = next((found for route in chain.routes for security in securities(route)
                      if (found := self.setting(security))), None)
        return [] if first is None else [self.disabled_filter(first)]

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        setting = self.setting(route.security)
        return self.per_route(setting) if setting is not None else {}

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        setting = self.setting(rule.security)
        return self.per_route(setting) if setting is not None else {}

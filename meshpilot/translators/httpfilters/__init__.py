"""HTTP features: one module per feature, one ordering table, the chains built from it.

After Envoy Gateway's internal/xds/translator/httpfilters.go. Every HTTP connection manager
meshpilot generates (a gateway listener, a sidecar's outbound listeners, a sidecar's inbound
listener) gets its filters from `http_filters(ChainInputs...)`, before anything is packed; every
virtual host and route entry gets the features' `typed_per_filter_config` from
`add_virtual_host_configs` and `add_route_configs`; the views ask `services_of` which clusters
the features call. Nothing else knows which features exist. (What a route entry does by its
own fields, not through a filter, stays in `routes.py`: header edits, rewrites, retries,
timeouts, mirroring, hash policies.)

Each feature module holds an `HttpFeature` (`feature.py`) named `FEATURE` that says
- `filters(chain)`: its filters (name and typed config) in a chain of the given inputs, if any;
- `virtual_host_config(route)` and `route_config(route, rule, entry)`: its per-virtual-host and
  per-route config (filter name -> message), if any;
- `services(security)`: the Services whose clusters it needs (a JWKS server, an authorization
  service), and `secrets(chain)`: the SDS Secrets its filters name;
- `route_inputs`: what of a Route its listener-level config (`filters`) reads. A gateway
  listener is taken from the previous Translation while these stay equal, so a feature whose
  filters read a Route must set it (the request security features share `security_inputs`).

Adding a feature:

1. Write `httpfilters/<feature>.py`: its filter name, an `HttpFeature` subclass overriding the
   hooks it needs (most features are a disabled filter in the chain, switched on per virtual
   host or route entry: subclass `PerRouteSecurity` then, and say only which Security field
   drives it, its disabled filter and its per-route config), and `FEATURE = <that class>()`.
   It may import `feature.py`, other features' names, `translators.matchers`, `names` and
   `protos`; never the views, `routes.py` or `listeners.py` (they import this package).
2. Put `<feature>.FEATURE` into `ORDER` below, where its filter must run.
3. Add a golden case (`tests/golden/<case>/policy.yaml`, its `<view>.yaml` files generated
   with `MESHPILOT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden`) and review the rendered
   Envoy config; `envoy --mode validate` checks it in the same test run.

(The policy side, the field in `inputs/` and the model in `ir/`, is a separate change.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from envoy.config.route.v3.route_components_pb2 import Route as EnvoyRoute
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from meshpilot.ir.model import Route, Rule
from meshpilot.translators.httpfilters import (
    api_key_auth,
    audit,
    basic_auth,
    compressor,
    cors,
    csrf,
    decompressor,
    dynamic_forward_proxy,
    ext_authz,
    fault,
    jwt_authn,
    local_ratelimit,
    mesh_authorization,
    ratelimit,
    rbac,
    router,
    stateful_session,
)
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    securities,
)
from meshpilot.translators.protos import pack

# The one order of every chain; a feature absent from a chain is skipped.
ORDER: tuple[HttpFeature, ...] = (
    cors.FEATURE,  # answers preflights before anything else runs (they carry no credentials)
    csrf.FEATURE,  # a forged request is refused before it costs a token or a check
    local_ratelimit.FEATURE,  # first of security: credential guessing is limited too
    ratelimit.FEATURE,  # shared limits, asked of a rate limit service
    jwt_authn.FEATURE,
    basic_auth.FEATURE,
    api_key_auth.FEATURE,
    audit.FEATURE,  # Istio's AUDIT: marks, refuses nothing; first, so a refused request is too
    ext_authz.CUSTOM_FEATURE,  # Istio's CUSTOM: its provider is asked before DENY and ALLOW
    rbac.FEATURE,  # DENY then ALLOW, after the authentications whose claims they read
    mesh_authorization.FEATURE,  # a sidecar's callers, by SPIFFE ID (inbound only)
    decompressor.FEATURE,  # request bodies inflated once allowed, before ext_authz reads one
    ext_authz.FEATURE,  # the remote service is asked last, for what nothing local refused
    fault.FEATURE,  # after security: a refused request is not delayed first
    compressor.FEATURE,  # right before the router whose responses it compresses
    stateful_session.FEATURE,  # sends a request to its session's endpoint: the router's pick
    dynamic_forward_proxy.FEATURE,  # resolves an unknown Host for the router's passthrough
    router.FEATURE,
)

# The distinct functions by which features read Routes for their listener-level config.
_ROUTE_READERS: tuple[Callable[[Route], object], ...] = tuple(dict.fromkeys(
    f.route_inputs for f in ORDER if f.route_inputs is not None))

__all__ = ["ORDER", "ChainInputs", "HttpFeature", "add_route_configs",
           "add_virtual_host_configs", "chain_secrets", "http_filters", "route_inputs",
           "services_of"]


def http_filters(chain: ChainInputs) -> list[HttpFilter]:
    """The filters of one HTTP connection manager, in `ORDER`."""
    return [f for feature in ORDER for f in feature.filters(chain)]


def chain_secrets(chain: ChainInputs) -> list[Secret]:
    return [s for feature in ORDER for s in feature.secrets(chain)]


def _overriding(hook: str) -> tuple[HttpFeature, ...]:
    """The features of `ORDER` that override `hook` (the others would answer "nothing"): asked
    for every virtual host and route entry, so the rest are not asked at all."""
    default = getattr(HttpFeature, hook)
    return tuple(f for f in ORDER if getattr(type(f), hook) is not default)


_VIRTUAL_HOST_CONFIGS = _overriding("virtual_host_config")
_ROUTE_CONFIGS = _overriding("route_config")


def add_virtual_host_configs(vhost: VirtualHost, route: Route) -> None:
    for feature in _VIRTUAL_HOST_CONFIGS:
        for name, config in feature.virtual_host_config(route).items():
            vhost.typed_per_filter_config[name].CopyFrom(pack(config))


def add_route_configs(entry: EnvoyRoute, route: Route, rule: Rule) -> None:
    """A rule's configs on one of its entries (each replaces the virtual host's of its filter)."""
    for feature in _ROUTE_CONFIGS:
        for name, config in feature.route_config(route, rule, entry.name).items():
            entry.typed_per_filter_config[name].CopyFrom(pack(config))


_CALLERS = _overriding("services")


def services_of(route: Route) -> Iterator[str]:
    """The Services a Route's features call, per security setting (the Route's, then each
    rule's), in `ORDER`; a service may come more than once."""
    for security in securities(route):
        for feature in _CALLERS:
            yield from feature.services(security)


def route_inputs(routes: Iterable[Route]) -> tuple[object, ...]:
    """What the listener-level configs of a chain serving `routes` are made of: equal inputs,
    equal filters."""
    return tuple(tuple(read(route) for read in _ROUTE_READERS) for route in routes)

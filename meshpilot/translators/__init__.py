"""Translators: the model and a view in, the Envoy resources that view should hold out.

Pure: no I/O, no clocks, deterministic output (the same model gives byte-identical resources, so
versions do not churn). One module per resource family; this module assembles them:

    names.py      every generated resource's name
    clusters.py   Service (or subset) -> Cluster
    endpoints.py  endpoints -> ClusterLoadAssignment
    listeners.py  Gateway listener -> Listener (HTTP connection manager, RDS over ADS)
    routes.py     Routes attached to a listener -> RouteConfiguration
    secrets.py    TLS: certificates and CAs -> SDS Secrets, and the contexts that name them
    raw.py        `kind: EnvoyResources`, passed through

What a view receives:
- A view named like a Gateway: a Listener and a RouteConfiguration per gateway listener (a tcp
  listener has no routes), and only the clusters its Routes and tcp listeners send traffic to
  (a whole service or a subset), with the ClusterLoadAssignment of each EDS cluster. A gateway
  never receives a large mesh's every service.
- A view named like a Service with `sidecar:`: its inbound listener and application cluster,
  and outbound listeners, routes, clusters and endpoints for the services it calls only
  (translators/sidecar.py, docs/mesh.md). Any other view: no generated resources.
- Every view: the raw EnvoyResources addressed to it. Escape hatch: a raw resource with the same
  type and name as a generated one replaces it, so a hand-written cluster `reviews` overrides
  the generated one while everything else stays generated.
- Then the plugins' resources (`translators/plugins.py`), in plugin order: each adds resources or
  replaces (patches) one of the same type and name, whether raw, generated or an earlier
  plugin's. So the order is raw -> generated -> plugins, and the last word is a plugin's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from meshpilot.base import types
from meshpilot.ir.model import (
    Endpoint,
    Gateway,
    GatewayListener,
    Model,
    RawResource,
    Route,
    Service,
)
from meshpilot.translators import (
    clusters,
    endpoints,
    httpfilters,
    listeners,
    mtls,
    names,
    raw,
    routes,
    secrets,
    sidecar,
)
from meshpilot.translators.plugins import Plugin, apply_plugins, as_plugins
from meshpilot.xds.resources import Resource, ResourceMap
from meshpilot.xds.snapshot import Snapshot


class Translation:
    """All views of one model. Each resource is serialized once and shared by every view.

    Clusters and their endpoints are built on first use and kept, so a service that many
    gateways route to is translated and serialized once. `snapshot` may be called from several
    threads: two racing on the same cluster build equal bytes, and either result is kept.

    `plugins` (`Plugin`s, or plugin objects and functions) run for every view, after raw and
    generated resources; a plugin's failure raises `PluginError`. Pass the same `Plugin`s to
    every Translation of a process: their conversion caches live on them.

    `previous` (the Translation of an earlier model, usually sharing most model objects with
    this one after a reload) lends its Resources where their inputs are equal: a raw resource
    that is the same object, the clusters and assignments of a Service (with its discovered
    endpoints) equal to the earlier one, and a gateway listener's Listener, Secrets and
    RouteConfiguration when the Gateway and the Routes attached to that listener are equal.
    Frozen model dataclasses compare by value, so the result is exactly what a Translation
    without `previous` builds; only the time differs. No reference to `previous` itself is
    kept (so translations do not chain), only its caches and its model.
    """

    def __init__(self, model: Model, plugins: Iterable[Plugin | object] = (),
                 discovered: Mapping[str, tuple[Endpoint, ...]] | None = None,
                 identities: mtls.IdentitySource | None = None,
                 previous: Translation | None = None):
        self.model = model
        # Mesh mTLS: the CA's certificates per view (None: no identity Secrets; mtls.py).
        self.identities = identities
        self.trust = mtls.TrustDomain.of(identities)
        self.plugins = as_plugins(plugins)
        # Endpoints found at run time (meshpilot.discovery), per service: added to the policy's.
        self.discovered: dict[str, tuple[Endpoint, ...]] = dict(discovered or {})
        self._reuse = _Reuse.of(previous, self.trust) if previous is not None else None
        self._raw = self._encode_raw(model)
        self._routes_of: dict[str, list[Route]] = {}
        for route in model.routes:  # sorted by name in the model, so kept in name order here
            if route.gateway is not None:  # else attached to a service: the mesh's
                self._routes_of.setdefault(route.gateway, []).append(route)
        self._clusters: dict[str, tuple[Resource, ...]] = {}
        self._secrets: dict[str, tuple[Resource, ...]] = {}  # per service: its CA Secret
        # (gateway, listener) -> the inputs and resources of that gateway listener
        self._listeners: dict[tuple[str, str], _ListenerParts] = {}
        # Serialized VirtualHosts of the Routes used by this Translation (routes.py)
        self._virtual_hosts: routes.VirtualHostCache = {}
        self._mesh = sidecar.Mesh(model, self._cluster_resources, self.trust)

    def _encode_raw(self, model: Model) -> list[tuple[RawResource, Resource]]:
        if self._reuse is None:
            return raw.encode(model)
        earlier = self._reuse.raw
        encoded = []
        for resource in model.raw:
            found = earlier.get(id(resource))  # kept alive by the earlier list: ids are stable
            if found is not None and found[0] is resource:
                encoded.append(found)
            else:
                encoded.append((resource, Resource.from_message(resource.type_url,
                                                                resource.name,
                                                                resource.message)))
        return encoded

    def snapshot(self, view: str, previous: Snapshot | None = None) -> Snapshot:
        """The view's snapshot. With `previous` (an earlier snapshot of the view), each type
        whose resources are the very objects `previous` holds keeps its `ResourceMap` object
        (so diffs against it cost nothing), and `previous` itself is returned if nothing
        changed; the content is the same either way."""
        handwritten: list[Resource] = raw.for_view(self._raw, view)
        overridden = {(r.type_url, r.name) for r in handwritten}
        generated = self._generated(view)
        # TLS to a Service's endpoints: its CA Secret wherever one of its clusters goes.
        generated += secrets.cluster_secret_resources(generated, self.model, self._secrets)
        generated += self._identity_secrets(view, generated)  # mesh mTLS: mtls.py
        generated = [r for r in generated if (r.type_url, r.name) not in overridden]
        assembled = handwritten + generated
        if self.plugins:
            assembled = apply_plugins(self.plugins, self.model, view, assembled)
        if previous is None or previous.view != view:
            return Snapshot.from_resources(view, assembled)
        return _reusing(previous, assembled)

    def _generated(self, view: str) -> list[Resource]:
        gateway = self.model.gateway(view)
        if gateway is None:
            service = self.model.service(view)  # a sidecar's view: translators/sidecar.py
            return [] if service is None else self._mesh.resources(service)
        attached = self._routes_of.get(gateway.name, [])
        resources: list[Resource] = []
        for spec in gateway.listeners:
            parts = self._listener_resources(gateway, spec, attached)
            resources.extend(parts.front)
            resources.extend(parts.config)
        # No sorting needed here: a snapshot orders each type's resources by name.
        for service, subset in _backends(gateway, attached):
            resources.extend(self._cluster_resources(service, subset))
        return resources

    def _listener_resources(self, gateway: Gateway, spec: GatewayListener,
                            attached: list[Route]) -> _ListenerParts:
        """A gateway listener's Listener, its certificates' Secrets and its RouteConfiguration:
        built once per Translation, or taken from the previous one when their inputs are equal
        (the Listener: the Gateway and the security of the Routes served there, which is all
        auth.py reads; the RouteConfiguration: the Gateway and those Routes)."""
        key = (gateway.name, spec.name)
        found = self._listeners.get(key)
        if found is not None:
            return found
        served = tuple(r for r in attached if routes.attaches(r, spec))
        has_routes = spec.protocol != "tcp" and spec.redirect_to_https is None
        security = tuple(_security_key(r) for r in served) if has_routes else ()
        earlier = self._reuse.listeners.get(key) if self._reuse is not None else None
        if earlier is not None and not (earlier.gateway is gateway or earlier.gateway == gateway):
            earlier = None
        if earlier is not None and earlier.security == security:
            front = earlier.front
        else:
            listener = listeners.listener(gateway, spec, served)
            front = (Resource.from_message(types.LISTENER, listener.name, listener),
                     *secrets.listener_resources(gateway.name, spec))  # https: its certs
        config: tuple[Resource, ...] = ()
        if earlier is not None and earlier.routes == served:  # identity first, then by value
            config = earlier.config
            if has_routes and self._reuse is not None:  # kept for the next Translation
                hosts, kept = self._reuse.virtual_hosts, self._virtual_hosts
                for route in served:
                    found = hosts.get((id(route), spec.port))
                    if found is not None and found[0] is route:
                        kept[(id(route), spec.port)] = found
        elif has_routes:  # else a TCP proxy, or a listener redirecting to https: no routes
            # Only the virtual hosts of Routes that are not the previous objects are serialized.
            earlier_hosts = self._reuse.virtual_hosts if self._reuse is not None else {}
            config = (routes.route_configuration_resource(gateway, spec, served, earlier_hosts,
                                                          self._virtual_hosts),)
        parts = self._listeners[key] = _ListenerParts(gateway, served, security, front, config)
        return parts

    def _identity_secrets(self, view: str, generated: list[Resource]) -> list[Resource]:
        if self.identities is None or not mtls.needs_identity(self.model, view, generated):
            return []
        return mtls.identity_secrets(self.identities, view)

    def refresh_identity(self, previous: Snapshot) -> Snapshot:
        """`previous` with the view's rotated certificate: an SDS-only change. With plugins
        (which may patch anything) the view is assembled again."""
        if self.plugins:
            return self.snapshot(previous.view)
        overridden = {(r.type_url, r.name) for r in raw.for_view(self._raw, previous.view)}
        if self.identities is None or mtls.IDENTITY_SECRET not in previous.get(types.SECRET) \
                or (types.SECRET, mtls.IDENTITY_SECRET) in overridden:
            return previous
        return mtls.refresh_identity(previous,
                                     mtls.identity_secrets(self.identities, previous.view))

    def _cluster_resources(self, service_name: str, subset: str | None) -> tuple[Resource, ...]:
        """The cluster (and, for EDS, its assignment) of a service or subset, built once."""
        name = names.cluster(service_name, subset)
        found = self._clusters.get(name)
        if found is None:
            service = self.service(service_name)
            if self._reuse is not None:
                found = self._reuse.cluster(name, service_name, service)
            if found is None:
                found = _translate_cluster(service, subset, self.trust)
            self._clusters[name] = found
        return found

    # ---- discovered endpoints: the EDS fast path -----------------------------------------------

    def service(self, name: str) -> Service | None:
        """The policy's Service with its discovered endpoints added (an address already written
        in the policy is not added twice). Discovered endpoints are IPs, so they never change a
        service's cluster type; a service with none at all still gets its (EDS) cluster."""
        return _with_discovered(self.model, self.discovered, name)

    def with_endpoints(self, discovered: Mapping[str, tuple[Endpoint, ...]]) -> Translation:
        """This translation with other discovered endpoints: the model, raw resources and every
        cluster of an unaffected service are shared, nothing is loaded or re-validated."""
        new = copy.copy(self)
        new.discovered = dict(discovered)
        changed = self.changed_services(discovered)
        new._clusters = {name: built for name, built in self._clusters.items()
                         if name.partition(names.SEPARATOR)[0] not in changed}
        mesh = getattr(self, "_mesh", None)
        if mesh is not None:  # the sidecars' Mesh must build clusters through the new cache
            new._mesh = copy.copy(mesh)
            new._mesh._cluster_resources = new._cluster_resources
        return new

    def changed_services(self, discovered: Mapping[str, tuple[Endpoint, ...]]) -> set[str]:
        return {s for s in set(self.discovered) | set(discovered)
                if self.discovered.get(s, ()) != discovered.get(s, ())}

    def refresh_endpoints(self, previous: Snapshot, services: set[str]) -> Snapshot:
        """`previous` (this view's snapshot from an earlier Translation of the same model) with
        the clusters and assignments of `services` rebuilt. Listeners, routes and every other
        resource are not translated again, and each type whose content did not change keeps its
        `ResourceMap` object: for an EDS service only the endpoints map changes. With plugins
        (which may patch anything) the view is assembled again, still reusing unchanged maps."""
        view = previous.view
        if self.plugins:
            fresh = self.snapshot(view)
            every = set(fresh.type_urls()) | set(previous.type_urls())
            maps = {t: (previous.get(t) if previous.get(t).version == fresh.get(t).version
                        else fresh.get(t)) for t in every}
            return Snapshot(view, {t: m for t, m in maps.items() if len(m)})
        overridden = {(r.type_url, r.name) for r in raw.for_view(self._raw, view)}
        updates: dict[str, dict[str, Resource]] = {}
        for name in previous.get(types.CLUSTER):
            service, _, subset = name.partition(names.SEPARATOR)
            if service not in services:
                continue
            for resource in self._cluster_resources(service, subset or None):
                if (resource.type_url, resource.name) in overridden:
                    continue
                old = previous.get(resource.type_url).get(resource.name)
                if old is None or old.version != resource.version:
                    updates.setdefault(resource.type_url, {})[resource.name] = resource
        if not updates:
            return previous
        maps = {t: previous.get(t) for t in previous.type_urls()}
        for type_url, changed in updates.items():
            maps[type_url] = ResourceMap(type_url, {**maps.get(type_url, {}), **changed}.values())
        return Snapshot(view, maps)


def _with_discovered(model: Model, discovered: Mapping[str, tuple[Endpoint, ...]],
                     name: str) -> Service | None:
    service = model.service(name)
    found = discovered.get(name)
    if service is None or not found:
        return service
    static = {(e.host, e.port) for e in service.endpoints}
    extra = tuple(e for e in found if (e.host, e.port) not in static)
    return replace(service, endpoints=service.endpoints + extra) if extra else service


@dataclass(frozen=True, slots=True)
class _ListenerParts:
    """One gateway listener's resources and what they were built from."""

    gateway: Gateway
    routes: tuple[Route, ...]  # the Routes served on the listener, in name order
    security: tuple[object, ...]  # what auth.py reads of those Routes (_security_key)
    front: tuple[Resource, ...]  # the Listener, then its certificates' Secrets
    config: tuple[Resource, ...]  # its RouteConfiguration (none for tcp or a redirect)


def _security_key(route: Route) -> tuple[object, ...]:
    """What the listener's security filters are made of, of one Route (auth.py reads its name,
    its and its rules' security, and how many matches each rule has)."""
    return (route.name, route.security,
            tuple((rule.security, len(rule.matches)) for rule in route.rules))


@dataclass(frozen=True, slots=True)
class _Reuse:
    """What a Translation may take from the one before it: its caches and its inputs."""

    model: Model
    discovered: Mapping[str, tuple[Endpoint, ...]]
    clusters: Mapping[str, tuple[Resource, ...]]
    listeners: Mapping[tuple[str, str], _ListenerParts]
    raw: Mapping[int, tuple[RawResource, Resource]]  # id(raw resource) -> (it, its Resource)
    same_trust: bool
    virtual_hosts: Mapping[tuple[int, int], routes.VirtualHostBytes]

    @classmethod
    def of(cls, previous: Translation, trust: mtls.TrustDomain) -> _Reuse:
        same_trust = (previous.trust.trust_domain, previous.trust.namespace) == \
            (trust.trust_domain, trust.namespace)
        return cls(previous.model, previous.discovered, previous._clusters,
                   previous._listeners, {id(r): (r, res) for r, res in previous._raw},
                   same_trust, previous._virtual_hosts)

    def cluster(self, name: str, service_name: str,
                service: Service | None) -> tuple[Resource, ...] | None:
        """The earlier cluster (and assignment) `name`, if its Service is equal."""
        if not self.same_trust:
            return None
        found = self.clusters.get(name)
        if found is None:
            return None
        earlier = _with_discovered(self.model, self.discovered, service_name)
        return found if earlier is service or earlier == service else None


def _reusing(previous: Snapshot, assembled: list[Resource]) -> Snapshot:
    """`Snapshot.from_resources(previous.view, assembled)`, keeping each of `previous`'s maps
    whose resources are exactly the objects assembled (same content, so same version)."""
    by_type: dict[str, list[Resource]] = {}
    for resource in assembled:
        by_type.setdefault(resource.type_url, []).append(resource)
    maps: dict[str, ResourceMap] = {}
    unchanged = set(by_type) == set(previous.type_urls())
    for type_url, resources in by_type.items():
        earlier = previous.get(type_url)
        if len(earlier) == len(resources) and all(earlier.get(r.name) is r for r in resources):
            maps[type_url] = earlier  # equal length and each name found: no duplicates either
        else:
            maps[type_url] = ResourceMap(type_url, resources)
            unchanged = False
    return previous if unchanged else Snapshot(previous.view, maps)


def _backends(gateway: Gateway, attached: list[Route]) -> Iterator[tuple[str, str | None]]:
    """(service, subset) of every backend of the Routes served on some listener of `gateway`,
    and the service of every tcp listener, each once."""
    seen: set[tuple[str, str | None]] = set()
    http = [spec for spec in gateway.listeners
            if spec.protocol == "http" and spec.redirect_to_https is None]
    for spec in gateway.listeners:
        if spec.service is not None and (spec.service, None) not in seen:
            seen.add((spec.service, None))
            yield spec.service, None
    for route in attached:
        if not any(routes.attaches(route, spec) for spec in http):
            continue
        for service in httpfilters.services_of(route):  # a JWKS server, an authorization service
            if (service, None) not in seen:
                seen.add((service, None))
                yield service, None
        for rule in route.rules:
            for backend in (*rule.backends, *rule.mirrors):  # a mirror needs its cluster too
                key = (backend.service, backend.subset)
                if key not in seen:
                    seen.add(key)
                    yield key


def _translate_cluster(service: Service | None, subset: str | None,
                       trust: mtls.TrustDomain | None = None) -> tuple[Resource, ...]:
    # The loader rejects a backend naming an unknown service or subset; if one got through
    # anyway, sending no cluster (Envoy answers 503) beats a subset cluster holding every
    # endpoint of the service.
    if service is None or (subset is not None and service.subset(subset) is None):
        return ()
    cluster = mtls.secure_cluster(clusters.cluster(service, subset), service,
                                  trust or mtls.TrustDomain())
    built = [Resource.from_message(types.CLUSTER, cluster.name, cluster)]
    if not clusters.uses_dns(service):
        assignment = endpoints.load_assignment(names.eds_service(cluster.name),
                                               service.endpoints_of(subset),
                                               dict(service.zone_weights))
        built.append(Resource.from_message(types.ENDPOINT, assignment.cluster_name, assignment))
    return tuple(built)

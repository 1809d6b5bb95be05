"""A gateway view's snapshot patched after an edit: the cost follows what changed.

A gateway view holds its listeners' resources (Listener, Secrets, RouteConfiguration: one entry
per gateway listener, whatever `gateway.py` builds for it, by name) and the clusters of every
(service, subset) its Routes and listeners send to, each with its assignment and CA Secret.
`ViewAssembly` records a view's snapshot as those contributions: which (service, subset) keys
each Route uses (documents -> what they feed), how many users each key has, which keys each
service has (names -> what they feed), each key's and each listener's resources, and how many
contributions hold each resource name. Given what an edit changed (`ir/changes.py`: Routes,
Services, Gateways by name), `ViewAssembly.patched` rebuilds only the listeners a changed
Route is served on, the keys whose users came or went and the keys of changed Services, and
patches the earlier snapshot's maps (`ResourceMap.patched`): nothing walks the whole set.

The result is the snapshot a full assembly gives (tests compare them byte for byte). A view is
only patched when everything it holds comes from here: no raw EnvoyResources, no plugins, the
gateway itself unchanged, and no changed Service with a failover (whose targets' clusters it
would add); otherwise it is assembled whole, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshpilot.ir.changes import ModelChanges, route_named
from meshpilot.ir.model import Gateway, Model, Route
from meshpilot.translators import failover, snapshots
from meshpilot.translators.gateway import (
    GatewayViews,
    gateway_backends,
    http_listeners,
    route_backends,
)
from meshpilot.translators.routes import attaches
from meshpilot.xds.resources import Resource
from meshpilot.xds.snapshot import Snapshot

BackendKey = tuple[str, str | None]  # (service, subset)
ResourceKey = tuple[str, str]  # (type URL, name)
# A key's resources (clusters, assignments, CA Secrets) and whether they need the view's
# identity (a cluster originating mesh mTLS).
Contribution = tuple[tuple[Resource, ...], bool]
Contribute = Callable[[BackendKey], Contribution]
_CLAIMS = threading.Lock()


@dataclass(slots=True)
class ViewAssembly:
    """What one gateway view's snapshot was assembled from (see the module's docstring)."""

    gateway: Gateway
    snapshot: Snapshot | None = None  # the snapshot made of it (patches apply to it only)
    routes: dict[str, Route] = field(default_factory=dict)  # the gateway's Routes, by name
    route_keys: dict[str, tuple[BackendKey, ...]] = field(default_factory=dict)
    gateway_keys: tuple[BackendKey, ...] = ()
    uses: dict[BackendKey, int] = field(default_factory=dict)  # key -> users (Routes, gateway)
    keys_of: dict[str, frozenset[BackendKey]] = field(default_factory=dict)  # by service
    contributions: dict[BackendKey, Contribution] = field(default_factory=dict)
    listeners: dict[str, tuple[Resource, ...]] = field(default_factory=dict)
    counts: dict[ResourceKey, int] = field(default_factory=dict)  # contributions holding it
    needing: int = 0  # used keys whose clusters need the view's identity
    identity: tuple[Resource, ...] = ()  # the identity Secrets held (none: not needed)
    claimed: bool = False  # taken by a patch (`claim`): its records are the patch's now

    @classmethod
    def of(cls, model: Model, gateway: Gateway, views: GatewayViews,
           contribute: Contribute) -> ViewAssembly:
        """The whole view, assembled (what `GatewayViews.resources` and the CA Secrets of
        its clusters give), recorded by contribution."""
        assembly = cls(gateway)
        # A listener ending mesh mTLS (ISTIO_MUTUAL) shows the view's identity: one user of
        # it for the assembly's life (a gateway edit assembles the view again).
        assembly.needing = int(any(spec.mesh_tls for spec in gateway.listeners))
        for spec in gateway.listeners:
            built = views.listener(gateway, spec)
            resources = (*built.front, *built.config)
            assembly.listeners[spec.name] = resources
            assembly._hold(resources)
        http = http_listeners(gateway)
        assembly.gateway_keys = _expanded(model, gateway_backends(gateway))
        assembly._use(assembly.gateway_keys, contribute)
        for route in views.attached(gateway.name):
            assembly.routes[route.name] = route
            keys = _expanded(model, route_backends(route, http))
            if keys:
                assembly.route_keys[route.name] = keys
                assembly._use(keys, contribute)
        return assembly

    def resources(self) -> list[Resource]:
        """Every resource held, each once (a snapshot orders them)."""
        found: dict[ResourceKey, Resource] = {}
        for resources in self.listeners.values():
            found.update(((r.type_url, r.name), r) for r in resources)
        for resources, _ in self.contributions.values():
            found.update(((r.type_url, r.name), r) for r in resources)
        found.update(((r.type_url, r.name), r) for r in self.identity)
        return list(found.values())

    # ---- the patch ---------------------------------------------------------------------

    def claim(self, previous: Snapshot) -> bool:
        """Whether this assembly made `previous` and is not spent, and if so take it: two
        patches (a reload's and a discovered endpoints' one, on worker threads) never share
        one assembly; the one that does not get it assembles its view whole."""
        with _CLAIMS:
            if self.snapshot is not previous or self.claimed:
                return False
            self.claimed = True
            return True

    def patched(self, model: Model, changes: ModelChanges, services: set[str],
                views: GatewayViews, contribute: Contribute,
                identity: Callable[[], list[Resource]] | None) -> tuple[ViewAssembly, Snapshot]:
        """This view after `changes` (and `services`: every Service whose clusters may differ,
        the changed ones and those whose discovered endpoints moved), and its snapshot patched
        from `self.snapshot`. `identity` gives the view's identity Secrets (None: no mesh CA).

        The new assembly takes this one's records over (copying them would visit every
        resource): `self` must have been claimed (`claim`) and is spent (`snapshot` None), so
        a reload refused after this, whose next reload starts from the same earlier
        Translation again, assembles the view whole."""
        assert self.claimed
        previous = self.snapshot
        assert previous is not None
        self.snapshot = None  # spent, first (`claim`): whatever happens below
        new = ViewAssembly(self.gateway, None, self.routes, self.route_keys,
                           self.gateway_keys, self.uses, self.keys_of, self.contributions,
                           dict(self.listeners), self.counts, self.needing, self.identity)
        old_listeners = self.listeners
        touched: dict[ResourceKey, Resource | None] = {}
        gateway = self.gateway
        http = http_listeners(gateway)
        listeners: set[str] = set()
        came: set[BackendKey] = set()
        went: set[BackendKey] = set()
        for name in changes.routes:
            old = new.routes.get(name)
            route = route_named(model, name)
            if route is not None and route.gateway != gateway.name:
                route = None
            for served in (old, route):
                if served is not None:
                    listeners.update(spec.name for spec in gateway.listeners
                                     if spec.name in old_listeners and attaches(served, spec))
            if route is None:
                new.routes.pop(name, None)
            else:
                new.routes[name] = route
            before = new.route_keys.get(name, ())
            after = _expanded(model, route_backends(route, http)) if route is not None else ()
            if before == after:
                continue
            if after:
                new.route_keys[name] = after
            else:
                new.route_keys.pop(name, None)
            for key in before:
                new.uses[key] -= 1
                if not new.uses[key]:
                    del new.uses[key]
                    went.add(key)
            for key in after:
                count = new.uses.get(key, 0)
                new.uses[key] = count + 1
                if not count:
                    came.add(key)
        moved = came & went  # gone and back within the edit: still used, as it was
        came -= moved
        went -= moved
        for key in went:
            new._drop(new.contributions.pop(key), touched)
            new._file(key, False)
        refreshed = {key for service in services for key in new.keys_of.get(service, ())
                     if key not in went}
        for key in refreshed:
            if key not in came:
                new._drop(new.contributions.pop(key), touched)
                came.add(key)
        for key in came:
            contribution = contribute(key)
            new.contributions[key] = contribution
            new._add(contribution, touched)
            new._file(key, True)
        for name in listeners:
            spec = next(spec for spec in gateway.listeners if spec.name == name)
            built = views.listener(gateway, spec)
            resources = (*built.front, *built.config)
            _release(new.counts, old_listeners[name], touched)
            _keep(new.counts, resources, touched)
            new.listeners[name] = resources
        if identity is not None or new.identity:
            _release(new.counts, new.identity, touched)
            new.identity = tuple(identity()) if identity is not None and new.needing else ()
            _keep(new.counts, new.identity, touched)
        changed: dict[str, list[Resource]] = {}
        removed: dict[str, list[str]] = {}
        for (type_url, name), resource in touched.items():
            if (type_url, name) not in new.counts:
                removed.setdefault(type_url, []).append(name)
            elif resource is not None:
                changed.setdefault(type_url, []).append(resource)
        new.snapshot = snapshots.patched(previous, changed, removed)
        return new, new.snapshot

    # ---- bookkeeping -------------------------------------------------------------------

    def _use(self, keys: Iterable[BackendKey], contribute: Contribute) -> None:
        for key in keys:
            count = self.uses.get(key, 0)
            self.uses[key] = count + 1
            if not count:
                contribution = self.contributions[key] = contribute(key)
                self._hold(contribution[0])
                self.needing += contribution[1]
                self._file(key, True)

    def _hold(self, resources: Iterable[Resource]) -> None:
        _keep(self.counts, resources, {})

    def _add(self, contribution: Contribution, touched: dict[ResourceKey, Resource | None]
             ) -> None:
        _keep(self.counts, contribution[0], touched)
        self.needing += contribution[1]

    def _drop(self, contribution: Contribution,
              touched: dict[ResourceKey, Resource | None]) -> None:
        _release(self.counts, contribution[0], touched)
        self.needing -= contribution[1]

    def _file(self, key: BackendKey, used: bool) -> None:
        """Record (or forget) `key` among its service's keys (a new set: shared with the
        assembly this one was copied from)."""
        keys = self.keys_of.get(key[0], frozenset())
        keys = keys | {key} if used else keys - {key}
        if keys:
            self.keys_of[key[0]] = keys
        else:
            self.keys_of.pop(key[0], None)


def _keep(counts: dict[ResourceKey, int], resources: Iterable[Resource],
          touched: dict[ResourceKey, Resource | None]) -> None:
    for resource in resources:
        key = (resource.type_url, resource.name)
        counts[key] = counts.get(key, 0) + 1
        touched[key] = resource


def _release(counts: dict[ResourceKey, int], resources: Iterable[Resource],
             touched: dict[ResourceKey, Resource | None]) -> None:
    for resource in resources:
        key = (resource.type_url, resource.name)
        counts[key] -= 1
        if not counts[key]:
            del counts[key]
        touched.setdefault(key, None)


def _expanded(model: Model, keys: Iterable[BackendKey]) -> tuple[BackendKey, ...]:
    """`keys` each once, with the failover targets of each whole Service (`failover.py`)."""
    return tuple(failover.with_targets(model, keys))


def patchable(changes: ModelChanges, services: set[str]) -> bool:
    """Whether no changed Service has (or had) a failover: its aggregate names its targets,
    whose clusters the views sending to it hold too."""
    for name in services:
        for model in (changes.before, changes.after):
            service = model.service(name)
            if service is not None and service.failover:
                return False
    return True


Assemblies = Mapping[str, ViewAssembly]

"""Translators: the model and a view in, the Envoy resources that view should hold out.

Pure: no I/O, no clocks, deterministic output (the same model gives byte-identical resources, so
versions do not churn). `Translation` (below) only coordinates; each job has its module:

    the views
      gateway.py      a view named like a Gateway: its listeners, routes and backends' clusters
      sidecar.py      a view named like a Service with `sidecar:` (docs/mesh.md)
      upstreams.py    each service's clusters and endpoints, built once and shared by the views;
                      discovered endpoints added
      raw.py          `kind: EnvoyResources`, passed through; they replace generated resources
      (plugins.py)    then the plugins' resources, which have the last word
    the resource families
      listeners.py    Gateway listener -> Listener (HTTP connection manager, RDS over ADS)
      routes.py       Routes attached to a listener -> RouteConfiguration
      httpfilters/    one module per HTTP feature, the one filter order, the filter chains
      matchers.py     policy matches -> Envoy string, header and query matchers
      clusters.py     Service (or subset) -> Cluster;  endpoints.py  -> ClusterLoadAssignment
      secrets.py      TLS certificates and CAs -> SDS Secrets, and the contexts that name them
      mtls.py         mesh mTLS: SPIFFE identities, the trust bundle, TLS between sidecars
      names.py        every generated resource's name;  protos.py  small shared messages
    the incremental path
      reuse.py        what a Translation lends the next one (resources with equal inputs)
      snapshots.py    a view's snapshot from its earlier one, unchanged maps kept
      patch.py        a gateway view's snapshot patched by what an edit changed (by name)

What a view receives: its generated resources (a Gateway's or a sidecar's; any other view gets
none) and the CA Secrets of the services its clusters go to, plus its own identity Secrets under
mesh mTLS; then the raw EnvoyResources addressed to it, each replacing a generated resource of
the same type and name; then the plugins' resources, in plugin order, each adding a resource or
replacing one of the same type and name. So the order is raw -> generated -> plugins, and the
last word is a plugin's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

from meshpilot.base import types
from meshpilot.base.gcpause import collection_paused
from meshpilot.ir.changes import ModelChanges
from meshpilot.ir.model import Endpoint, Model, Service
from meshpilot.translators import locality, mtls, patch, raw, reuse, sidecar, snapshots
from meshpilot.translators.gateway import GatewayViews
from meshpilot.translators.plugins import Plugin, apply_plugins, as_plugins
from meshpilot.translators.upstreams import Upstreams
from meshpilot.xds.resources import Resource
from meshpilot.xds.snapshot import Snapshot

__all__ = ["Translation"]


class Translation:
    """All views of one model. Each resource is serialized once and shared by every view.

    Views are built on first use, and may be asked for from several threads.

    `plugins` (`Plugin`s, or plugin objects and functions) run for every view, after raw and
    generated resources; a plugin's failure raises `PluginError`. Pass the same `Plugin`s to
    every Translation of a process: their conversion caches live on them.

    `discovered`: endpoints found at run time (meshpilot.discovery), per service, added to the
    policy's. `identities`: the CA's certificates per view for mesh mTLS (None: no identity
    Secrets, as in `meshpilot render` and the golden files).

    `previous` (the Translation of an earlier model, usually sharing most model objects with this
    one after a reload) lends its resources whose inputs are equal (`reuse.py`); the result is
    exactly what a Translation without it builds. No reference to `previous` is kept.

    `changes` (what the loader changed from `previous.model` to `model`, `ir/changes.py`) lets
    it follow the edit instead of comparing everything: the gateways' Routes and untouched
    listeners, clusters and CA Secrets are taken from `previous` as they are, and a gateway
    view's snapshot is patched from its earlier one (`patch.py`), same content. Changes that
    do not lead from `previous.model` to `model` are ignored.
    """

    def __init__(self, model: Model, plugins: Iterable[Plugin | object] = (),
                 discovered: Mapping[str, tuple[Endpoint, ...]] | None = None,
                 identities: mtls.IdentitySource | None = None,
                 previous: Translation | None = None, changes: ModelChanges | None = None):
        self.model = model
        self.identities = identities
        self.trust = mtls.TrustDomain.of(identities)
        self.plugins = as_plugins(plugins)
        earlier = previous.lend(self.trust) if previous is not None else reuse.NOTHING
        discovered = discovered or {}
        self.changes: ModelChanges | None = None
        self._changed_services: set[str] = set()
        if changes is not None and previous is not None and \
                changes.follows(previous.model, model) and \
                previous.trust.same_as(self.trust) and earlier.routes_of is not None:
            self.changes = changes
            self._changed_services = set(changes.services) | {
                name for name in earlier.discovered.keys() | discovered.keys()
                if earlier.discovered.get(name, ()) != discovered.get(name, ())}
        self._earlier_views = earlier.views if self.changes is not None else {}
        self.assemblies: dict[str, patch.ViewAssembly] = {}  # gateway views, as assembled
        self.patched_views: set[str] = set()  # views whose snapshot was patched (tests)
        # With other discovered endpoints (`with_endpoints`): the assemblies of the
        # Translation it was made from, which `refresh_endpoints` patches.
        self._refreshed: Mapping[str, patch.ViewAssembly] = {}
        self.raw = raw.RawResources(model, earlier)
        self.upstreams = Upstreams(model, discovered, self.trust, earlier,
                                   keep_except=self._changed_parts() if self.changes else None)
        self.gateways = GatewayViews(model, self.upstreams.resources, earlier, self.changes)
        self.mesh = sidecar.Mesh(model, self.upstreams.resources, self.trust)

    def _changed_parts(self) -> list[Service]:
        """The changed Services as they were and as they are (their clusters are built
        again)."""
        assert self.changes is not None
        return [service for name in self._changed_services
                for model in (self.changes.before, self.model)
                if (service := model.service(name)) is not None]

    @property
    def discovered(self) -> Mapping[str, tuple[Endpoint, ...]]:
        return self.upstreams.discovered

    def snapshot(self, view: str, previous: Snapshot | None = None) -> Snapshot:
        """The view's snapshot. With `previous` (an earlier snapshot of the view), each type
        whose resources are the very objects `previous` holds keeps its `ResourceMap` object
        (so diffs against it cost nothing), and `previous` itself is returned if nothing
        changed; the content is the same either way."""
        # A view's resources are many long-lived objects in no cycle (base/gcpause.py).
        with collection_paused():
            found = self._patched(view, previous)
            if found is not None:
                return found
            assembled = self._assembled(view)
            if previous is None or previous.view != view:
                made = Snapshot.from_resources(view, assembled)
            else:
                made = snapshots.reusing(previous, assembled)
            assembly = self.assemblies.get(view)
            if assembly is not None and assembly.snapshot is None and not self.plugins and \
                    not self.raw.for_view(view):
                assembly.snapshot = made  # the assembly is all the snapshot holds: patchable
            return made

    def _patched(self, view: str, previous: Snapshot | None) -> Snapshot | None:
        """The view's snapshot patched from `previous` by what changed (`patch.py`), if it
        can be: a gateway view whose earlier assembly made `previous`, nothing else in it."""
        if self.changes is None or previous is None or self.plugins or self.model.raw:
            return None
        gateway = self.model.gateway(view)
        earlier = self._earlier_views.get(view)
        if gateway is None or not isinstance(earlier, patch.ViewAssembly) or \
                earlier.gateway is not gateway or view in self.changes.gateways or \
                not patch.patchable(self.changes, self._changed_services) or \
                not earlier.claim(previous):
            return None
        return self._patch(earlier, view, self.changes, self._changed_services)

    def _patch(self, earlier: patch.ViewAssembly, view: str, changes: ModelChanges,
               services: set[str]) -> Snapshot:
        identity = None
        if self.identities is not None:
            identities = self.identities

            def identity() -> list[Resource]:
                return mtls.identity_secrets(identities, view,
                                             mtls.view_identity(self.model, view, self.trust))
        assembly, snapshot = earlier.patched(self.model, changes, services, self.gateways,
                                             self._contribution(view), identity)
        self.assemblies[view] = assembly
        self.patched_views.add(view)
        return snapshot

    def _contribution(self, view: str) -> patch.Contribute:
        """What one (service, subset) adds to a view: its clusters (and assignments), their
        CA Secrets, and whether they need the view's identity."""
        # A gateway that says where it runs gets its own clusters of locality-balanced
        # Services (locality.py), as a calling sidecar does.
        caller = locality.gateway_caller(self.model.gateway(view))

        def contribute(key: tuple[str, str | None]) -> patch.Contribution:
            resources = self.upstreams.resources(*key, caller)
            needs = self.identities is not None and \
                mtls.needs_identity(self.model, view, resources)
            return (*resources, *self.upstreams.ca_secrets(resources)), needs
        return contribute

    def _assembled(self, view: str) -> list[Resource]:
        """raw -> generated -> plugins."""
        assembled = self.raw.over(view, self._generated(view))
        if self.plugins:
            assembled = apply_plugins(self.plugins, self.model, view, assembled)
        return assembled

    def _generated(self, view: str) -> list[Resource]:
        gateway = self.model.gateway(view)
        if gateway is not None and not self.plugins:
            # Recorded by contribution, so the next Translation can patch it (`patch.py`).
            assembly = patch.ViewAssembly.of(self.model, gateway, self.gateways,
                                             self._contribution(view))
            if self.identities is not None and assembly.needing:
                assembly.identity = tuple(mtls.identity_secrets(
                    self.identities, view, mtls.view_identity(self.model, view, self.trust)))
            self.assemblies[view] = assembly
            return assembly.resources()
        if gateway is not None:
            generated = self.gateways.resources(gateway)
        else:
            service = self.model.service(view)
            generated = [] if service is None else self.mesh.resources(service)
        # TLS to a Service's endpoints: its CA Secret wherever one of its clusters goes.
        generated += self.upstreams.ca_secrets(generated)
        if self.identities is not None and mtls.needs_identity(self.model, view, generated):
            generated += mtls.identity_secrets(  # its own, only
                self.identities, view, mtls.view_identity(self.model, view, self.trust))
        return generated

    # ---- the incremental path: reuse across Translations, and the SDS and EDS fast paths ------

    def lend(self, trust: mtls.TrustDomain) -> reuse.Earlier:
        """What this Translation lends the next one, whose trust domain is `trust`: clusters
        only under the same trust domain (their mTLS settings name it)."""
        same_trust = (self.trust.trust_domain, self.trust.namespace) == \
            (trust.trust_domain, trust.namespace)
        return reuse.Earlier(raw=self.raw.by_id(),
                             clusters=self.upstreams.built if same_trust else {},
                             localized=self.upstreams.localized_built if same_trust else {},
                             listeners=self.gateways.listeners,
                             virtual_hosts=self.gateways.virtual_hosts,
                             routes_of=self.gateways.routes_of,
                             route_inputs=self.gateways.route_inputs,
                             ca_secrets=self.upstreams.ca_secrets_built,
                             discovered=self.upstreams.discovered,
                             views={view: assembly for view, assembly in self.assemblies.items()
                                    if assembly.snapshot is not None})

    def release_earlier(self) -> None:
        """Stop lending from the previous Translation: what it built (every cluster, listener
        and virtual host of the previous model, removed ones included) is no longer kept alive
        by this one. Views built after this are built without reuse (the same result). The
        controller calls it once a reload's views are built: after a large policy is replaced
        by a small one, the large one's resources are then freed at once."""
        self.upstreams.release_earlier()
        self.gateways.release_earlier()

    def refresh_identity(self, previous: Snapshot) -> Snapshot:
        """`previous` with the view's rotated certificate: an SDS-only change. With plugins
        (which may patch anything) the view is assembled again."""
        if self.plugins:
            return self.snapshot(previous.view)
        if self.identities is None or mtls.IDENTITY_SECRET not in previous.get(types.SECRET) \
                or (types.SECRET, mtls.IDENTITY_SECRET) in self.raw.overridden(previous.view):
            return previous
        return snapshots.changed_only(previous, types.SECRET,
                                      mtls.identity_secrets(
                                          self.identities, previous.view,
                                          mtls.view_identity(self.model, previous.view,
                                                             self.trust)))

    def service(self, name: str) -> Service | None:
        """The policy's Service with its discovered endpoints added."""
        return self.upstreams.service(name)

    def changed_services(self, discovered: Mapping[str, tuple[Endpoint, ...]]) -> set[str]:
        return self.upstreams.changed_services(discovered)

    def with_endpoints(self, discovered: Mapping[str, tuple[Endpoint, ...]]) -> Translation:
        """This translation with other discovered endpoints: the model, raw resources, listeners,
        routes and every cluster of an unaffected service are shared, nothing is loaded or
        re-validated."""
        new = copy.copy(self)
        new.changes = None  # its views are refreshed from snapshots (refresh_endpoints)
        new._refreshed = self.assemblies  # what `refresh_endpoints` patches
        new.assemblies, new.patched_views = {}, set()
        new.upstreams = self.upstreams.with_endpoints(discovered)
        new.gateways = self.gateways.with_clusters(new.upstreams.resources)
        new.mesh = self.mesh.with_clusters(new.upstreams.resources)
        return new

    def refresh_endpoints(self, previous: Snapshot, services: set[str]) -> Snapshot:
        """`previous` (this view's snapshot from an earlier Translation of the same model) with
        the clusters and assignments of `services` rebuilt. Listeners, routes and every other
        resource are not translated again, and each type whose content did not change keeps its
        `ResourceMap` object: for an EDS service only the endpoints map changes. With plugins
        (which may patch anything) the view is assembled again, still reusing unchanged maps."""
        if self.plugins:
            return snapshots.keeping_equal_maps(previous, self.snapshot(previous.view))
        # A gateway view assembled by contribution: patched, so its assembly follows and the
        # next reload patches it too (`patch.py`); the same content either way.
        earlier = self._refreshed.get(previous.view)
        if earlier is not None and not self.model.raw and \
                earlier.gateway is self.model.gateway(previous.view):
            changes = ModelChanges(self.model, self.model, services=frozenset(services))
            if patch.patchable(changes, services) and earlier.claim(previous):
                return self._patch(earlier, previous.view, changes, services)
        # A sidecar's (or a located gateway's) clusters of services balanced by its locality
        # are its own (locality.py).
        caller = locality.view_caller(self.model, previous.view)
        return snapshots.with_clusters_of(
            previous, services,
            lambda service, subset: self.upstreams.resources(service, subset, caller),
            self.raw.overridden(previous.view))

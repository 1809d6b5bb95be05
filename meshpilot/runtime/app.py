"""One meshpilot process: policy controller, snapshot cache, xDS gRPC server, admin HTTP server
and the folder watcher, started and stopped together on one event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import signal
import socket
import time
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import grpc
from aiohttp import web

from meshpilot.base import gcpause
from meshpilot.base.netutil import split_address
from meshpilot.base.privatefiles import write_private
from meshpilot.ca import CertificateAuthority, WorkloadIdentities
from meshpilot.ca.authority import ROOT_CERT, ROOT_KEY, WorkloadCertificate
from meshpilot.ca.rotation import RootStore, RotationState
from meshpilot.ca.tokens import KEY_FILE as TOKEN_KEY_FILE
from meshpilot.ca.tokens import TokenAuthority
from meshpilot.discovery.docker_source import DockerSource
from meshpilot.discovery.registry import EndpointRegistry
from meshpilot.discovery.shared import SharedDocker, SharedRegistrations
from meshpilot.runtime.admin import AdminSources, make_app
from meshpilot.runtime.admin_guard import HostRules
from meshpilot.runtime.ca_rotation import RootRotator
from meshpilot.runtime.controller import Controller
from meshpilot.runtime.convergence import Convergence
from meshpilot.runtime.envoy_metrics import EnvoyMetrics
from meshpilot.runtime.fleet import FleetStatus
from meshpilot.runtime.metrics import Metrics
from meshpilot.runtime.plugin_loader import load_plugins
from meshpilot.runtime.policy_store import POLICY_KEY, PolicyFolder, unpack
from meshpilot.runtime.prepush import PrePush, ResourceCheck
from meshpilot.runtime.ratelimit_service import Counters, RateLimitServer
from meshpilot.runtime.rollout import RolloutMetrics, RolloutPolicy, Rollouts, policy_of
from meshpilot.runtime.watch import Debouncer, PolicyWatcher
from meshpilot.store import DEFAULT_PREFIX, Entry, StoreError, StoreUnavailable
from meshpilot.store.election import Election
from meshpilot.store.etcd import EtcdStore, Mirror, ReplicaLease
from meshpilot.store.sealed import KEY_FILE as STORE_KEY_FILE
from meshpilot.store.sealed import SealingKey, share_files
from meshpilot.translators.provenance import origins_of
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.csds import add_csds
from meshpilot.xds.metrics_service import MetricsService
from meshpilot.xds.security import (
    IssuedServerCertificate,
    NodeTokenCheck,
    OperatorCheck,
    ServerCertificates,
    XdsSecurityError,
    check_settings,
    is_loopback,
    make_authorize,
)
from meshpilot.xds.server import Authorize, XdsServer
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.status import Connection, ProxyRegistry

log = logging.getLogger("meshpilot")

_XDS_CERT_TTL = 366 * 24 * 3600.0
# With a store: what this replica followed last, for a restart while the store is away.
_LAST_REGISTRATIONS = "last-known-registrations.json"
_LAST_DOCKER = "last-known-docker.json"
# Node tokens written by --write-node-credentials are written again at every start; an Envoy
# keeps the one in its bootstrap until restarted, so they live as long as `bootstrap`'s do.
_NODE_CREDENTIALS_TTL = 365 * 24 * 3600.0


# Envoy's xDS client sends keepalive pings; accept them, and find dead peers ourselves.
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 100_000),
    # gRPC core queues a new call until the application asks for it; grpc.aio asks for one
    # call at a time, from the event loop, so a burst of new streams (thousands of Envoys
    # connecting or reconnecting at once) waits there while the loop sends initial syncs. Past
    # `max_pending_requests` queued calls (default 1,000) core drops new ones at random, all of
    # them at the hard limit (default 3,000), logging nothing: the client sees CANCELLED (or,
    # from grpc.aio, INTERNAL "Failed execute_batch" on its first send). That capped one process
    # at ~2,200 streams opened together (docs/benchmarks.md). Every queued call is served
    # within seconds, so let the queue hold any realistic burst.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
    # And core cancels a queued call the application has not taken within this many seconds
    # (default 30): on a busy machine, 5,000 or 10,000 streams opened at once take longer than
    # that to be accepted one by one while the loop sends their initial syncs, and the last
    # few hundred were CANCELLED (issue 18's storms). Envoy would retry; better to serve them.
    ("grpc.server_max_unrequested_time_in_server", 600),
]

_OPEN_XDS = ("xDS is plaintext and unauthenticated (--insecure-xds): anyone who can connect may "
             "claim any view and receive its config and keys, and read every node's through "
             "CSDS")
_OPEN_ADMIN = ("the admin API is open (--insecure-admin): its debug, config and registration "
               "endpoints need no token, so anyone who can reach it may read the fleet's "
               "config and register endpoints")


@dataclass
class Settings:
    policy: Path
    xds_address: str = "127.0.0.1:18000"
    admin_address: str = "127.0.0.1:18001"
    debounce_quiet: float = 0.1
    debounce_max: float = 10.0
    watch: bool = True
    control_plane_id: str = "meshpilot"
    plugins: tuple[str, ...] = ()  # entry point names (group `meshpilot.plugins`), in order
    # discovery (docs/discovery.md)
    docker: bool = False  # containers labelled meshpilot.service/meshpilot.port are instances
    docker_network: str | None = None  # their IP on this network; None: published host ports
    discovery_sweep: float = 0.25  # seconds between sweeps of lapsed registrations (TTLs)
    # credentials (docs/security.md): the token key (ca/tokens.py), and the mesh CA's root
    # unless ca_dir names another folder; None: both in memory, lost when the process stops
    state_dir: Path | None = None
    # Explicit opt-outs, each warned about at start and in /readyz: plaintext, unauthenticated
    # xDS; an admin API whose debug, config and write endpoints need no token.
    insecure_xds: bool = False
    insecure_admin: bool = False
    # More names the admin API answers to (its Host header; "NAME" at any port, or NAME:PORT),
    # beyond its address and, on loopback, 127.0.0.1/localhost/[::1] (runtime/admin_guard.py).
    admin_hosts: tuple[str, ...] = ()
    # the mesh CA (docs/security.md)
    ca_dir: Path | None = None  # root created here on first start, else loaded; None: state_dir
    trust_domain: str = "cluster.local"
    cert_ttl: float = 24 * 3600.0  # workload certificates; renewed at half-life
    # securing the xDS port (docs/operations.md, "Securing the control plane")
    xds_tls_cert: str | None = None  # PEM certificate (chain) meshpilot presents; with the key
    xds_tls_key: str | None = None
    xds_client_ca: str | None = None  # set: mutual TLS, clients need a certificate it signed
    xds_identity_check: str | None = None  # "strict" | "off"; None: strict iff a client CA
    # DNS names (besides meshpilot and localhost) on the serving certificate meshpilot issues
    # itself from the mesh CA when no --xds-tls-cert is given: the names Envoys dial it by.
    xds_server_names: tuple[str, ...] = ()
    # Folders besides the policy folder whose files (certificates, keys, API keys, JWKS,
    # htpasswd) the policy may name; a file anywhere else is a policy error.
    allowed_files: tuple[Path, ...] = ()
    # (view, folder) pairs: at start, write a node token for the view and the CA root there
    # (`token`, `ca.crt`), for Envoys that get their credentials from a shared folder or
    # volume (the compose stack: one volume per service, mounted only into that service).
    node_credentials: tuple[tuple[str, Path], ...] = ()
    # HOST:PORT of meshpilot's own rate limit service (runtime/ratelimit_service.py), for the
    # policy's shared rate limits; None: not started.
    rate_limit_address: str | None = None
    # Replicas sharing their state through etcd (docs/operations.md, "Running replicas"):
    # etcd://HOST:PORT[,HOST:PORT...]; None: this process's memory, as for one process.
    store: str | None = None
    store_prefix: str = DEFAULT_PREFIX  # every key under it: one fleet per prefix
    store_key: Path | None = None  # the key sealing shared credentials; None: state_dir/store.key
    replica_id: str | None = None  # this replica's name in the store; None: host-port-random
    replica_lease_ttl: float = 3.0  # seconds: a dead replica's Envoys and election lapse then
    store_wait: float = 30.0  # seconds to wait at start for a store to answer (first start)
    # Serve the policy revision `meshpilot apply` stored (runtime/policy_store.py) instead of
    # a folder of one's own; `policy` is then where it is written (state_dir/policy-from-store).
    policy_from_store: bool = False
    # Staged rollouts (runtime/rollout.py, `--rollout canary=10%,watch=30s,...`): each edit
    # goes to a canary share of every view's Envoys first. None: to every Envoy at once.
    rollout: RolloutPolicy | None = None
    # VHDS for delta ADS Envoys (xds/vhds.py, docs/operations.md): a gateway listener's route
    # configuration goes out without its virtual hosts, each virtual host a resource of its
    # own, so a one-host edit sends one virtual host. SotW and per-type streams: unchanged.
    vhds: bool = False
    # Apply an isolated save at its first event rather than after `debounce_quiet` (the
    # leading edge, runtime/watch.py); False: every change waits for the quiet period.
    debounce_leading: bool = True


class Meshpilot:
    def __init__(self, settings: Settings, plugins: Iterable[object] = (),
                 resource_check: ResourceCheck | None = None):
        """`plugins`: plugin objects or functions, run after those named in `settings`. A named
        plugin that is not installed or fails to import raises `PluginError` here.
        `resource_check`: Envoy's own check of what each reload changes, before it is pushed
        (`meshpilot.local.validator.EnvoyValidator`, which `meshpilot serve` passes unless
        --no-prepush-check); None: pushed unchecked, Envoys' NACKs are contained instead."""
        self.settings = settings
        self.metrics = Metrics()
        self.cache = SnapshotCache()
        self.registry = ProxyRegistry(locate=self.locate)
        self.endpoints = EndpointRegistry()  # discovered instances (registrations, Docker)
        # With a store, the token key and the CA root are the fleet's (store/sealed.py): the
        # files in our folders are made the store's before they are loaded below.
        self.store_said = self._share_credentials() if settings.store is not None else None
        self.policy_folder: PolicyFolder | None = None
        if settings.policy_from_store:
            settings = self.settings = self._policy_from_store()
        self.replica_id = settings.replica_id or \
            f"{socket.gethostname()}-{split_address(settings.xds_address)[1]}-" \
            f"{uuid.uuid4().hex[:6]}"
        # The mesh CA: workload certificates per view, renewed by `_rotate_certificates`.
        # Signs and checks the operator, registration and node tokens (ca/tokens.py).
        self.tokens = TokenAuthority.load_or_create(settings.state_dir)
        # A malformed admin address or --admin-host (ValueError) refuses to start, rather than
        # failing every admin request later.
        HostRules(settings.admin_address, settings.admin_hosts)
        # The roots, and a root rotation in progress (ca/rotation.py), from the CA folder.
        ca_folder = settings.ca_dir or settings.state_dir
        self.root_store = RootStore(ca_folder, settings.trust_domain) if ca_folder else None
        ca_state = (self.root_store.load_or_create() if self.root_store is not None else
                    RotationState.single(CertificateAuthority.load_or_create(
                        None, settings.trust_domain)))
        self.identities = WorkloadIdentities(ca_state.authority, ttl=settings.cert_ttl)
        self.controller = Controller(settings.policy, self.cache, self.metrics,
                                     plugins=[*load_plugins(settings.plugins), *plugins],
                                     endpoints=self.endpoints,
                                     identities=self.identities,
                                     allowed_files=settings.allowed_files,
                                     prepush=(PrePush(resource_check)
                                              if resource_check is not None else None))
        self.rotator = RootRotator(ca_state, self.root_store, self.identities, self.controller,
                                   self.cache, self.registry,
                                   on_server_root=self._reissue_xds_certificate,
                                   on_bundle=self.write_trust_bundles,
                                   refused=_ROTATION_WITH_STORE if settings.store else None)
        self._rotation_task: asyncio.Task[None] | None = None
        self.rate_limit_counters = Counters()
        self.rate_limit_server = None if settings.rate_limit_address is None else \
            RateLimitServer(settings.rate_limit_address, self.rate_limit_counters,
                            lambda: self.controller.model)
        self.docker: DockerSource | None = None
        if settings.docker and settings.store is None:
            self.docker = DockerSource(self.endpoints, network=settings.docker_network)
        # Set in start() with a store: the store, this replica's lease, what follows it.
        self.store: EtcdStore | None = None
        self.replica_lease: ReplicaLease | None = None
        self.shared_registrations: SharedRegistrations | None = None
        self.shared_docker: SharedDocker | None = None
        self.fleet: FleetStatus | None = None
        self.docker_election: Election | None = None
        self._store_tasks: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._rotator: asyncio.Task[None] | None = None
        tls, self.identity_check = check_settings(settings.xds_tls_cert, settings.xds_tls_key,
                                                  settings.xds_client_ca,
                                                  settings.xds_identity_check)
        if settings.insecure_xds and tls is not None:
            raise XdsSecurityError("--insecure-xds serves plaintext: it cannot go with "
                                   "--xds-tls-cert, --xds-tls-key or --xds-client-ca")
        # Read now: a missing or mismatched file refuses to start (XdsSecurityError).
        self.xds_certificates = ServerCertificates(tls) if tls is not None else None
        # Secure by default: without certificate files, TLS with a certificate this process
        # issues itself from the mesh CA (Envoys trust the CA root, `ca.crt`).
        self.xds_self_issued: WorkloadCertificate | None = None
        self._xds_issued_credentials: IssuedServerCertificate | None = None
        if not settings.insecure_xds and tls is None:
            self.xds_self_issued = self._issue_xds_certificate()
            self._xds_issued_credentials = IssuedServerCertificate(
                self.xds_self_issued.private_key, self.xds_self_issued.certificate_chain)
        self.xds_auth, authorize = self._xds_authorization()
        # Each edit's convergence, from its first file event to the last Envoy's ACK.
        self.convergence = Convergence(self.metrics.edit_convergence, clock=time.monotonic)
        self._edit_started: float | None = None  # the pending reload's first file event
        self.controller.on_applied = self._edit_applied
        # Envoy's metrics service on the xDS port, authenticated like xDS streams: what the
        # Envoys' own stats say of their traffic (rollouts' error rates, request rates).
        self.envoy_metrics = EnvoyMetrics()
        self.metrics_service = MetricsService(self.envoy_metrics.receive, authorize=authorize,
                                              on_closed=self.envoy_metrics.closed)
        # Which snapshot each stream follows while an edit is rolled out in stages.
        self.rollouts = Rollouts(self._rollout_policy, counts=self.envoy_metrics.sample,
                                 connections=self.registry.connections, wake=self.cache.wake,
                                 clock=time.monotonic, wall=time.time,
                                 metrics=RolloutMetrics(self.metrics.registry),
                                 on_end=lambda rollout: log.log(
                                     logging.INFO if rollout.state == "promoted"
                                     else logging.WARNING, "%s", rollout.line()))
        self._replaced: list[tuple[Snapshot | None, Snapshot]] = []
        self.controller.on_replaced = self._snapshots_replaced
        self._rollout_ticker: asyncio.Task[None] | None = None
        self.xds = XdsServer(self.cache, registry=self.registry, metrics=self.metrics,
                             control_plane_id=settings.control_plane_id,
                             authorize=authorize,
                             request_view=self.controller.views.snapshot_of,
                             on_settled=self._settled,
                             on_closed=self.convergence.closed,
                             on_nack=self.rollouts.nacked,
                             follow=self.rollouts.follow, vhds=settings.vhds)
        self.serving = False
        self.xds_address = settings.xds_address
        self.admin_address = settings.admin_address
        self._grpc: grpc.aio.Server | None = None
        self._admin: web.AppRunner | None = None
        self._watcher: PolicyWatcher | None = None
        self._debouncer: Debouncer | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def _share_credentials(self) -> str:
        """Make the token key and the CA root in our folders the fleet's (store/sealed.py),
        before anything loads them. StoreError says why this replica cannot start."""
        settings = self.settings
        if settings.state_dir is None:
            raise StoreError("--store needs a --state-dir (its store.key seals the credentials "
                             "the replicas share)")
        state = Path(settings.state_dir)
        ca_folder = Path(settings.ca_dir or state)
        key_path = settings.store_key or state / STORE_KEY_FILE
        key, created = SealingKey.load_or_create(key_path)
        files = [(TOKEN_KEY_FILE, state / TOKEN_KEY_FILE), (ROOT_CERT, ca_folder / ROOT_CERT),
                 (ROOT_KEY, ca_folder / ROOT_KEY)]

        def create_local() -> None:
            TokenAuthority.load_or_create(state)
            CertificateAuthority.load_or_create(ca_folder, settings.trust_domain)

        async def share() -> str:
            store = EtcdStore(settings.store or "", settings.store_prefix)
            try:
                return await share_files(store, key, files, create_local)
            finally:
                await store.close()

        deadline = time.monotonic() + settings.store_wait
        while True:
            try:
                said = _run_elsewhere(share())
                break
            except StoreUnavailable as e:
                # Started with etcd (compose, a reboot): wait for it a while, rather than fail.
                if time.monotonic() >= deadline:
                    if created:
                        key_path.unlink(missing_ok=True)
                    raise StoreUnavailable(f"{e} (waited {settings.store_wait:g}s)") from None
                log.warning("%s; waiting for it (at most %gs)", e, settings.store_wait)
                time.sleep(1.0)
            except StoreError as e:
                self._refused(e, created, key_path)
        log.info("store %s (prefix %s): %s", settings.store, settings.store_prefix, said)
        return said

    def _policy_from_store(self) -> Settings:
        """Write the stored policy revision into our folder (the last one written, if the
        store is unreachable) and serve that folder, reloaded on each new revision."""
        settings = self.settings
        if settings.store is None or settings.state_dir is None:
            raise StoreError("--policy-from-store needs --store and --state-dir")
        folder = self.policy_folder = PolicyFolder(Path(settings.state_dir) / "policy-from-store")
        key = SealingKey.load(settings.store_key or Path(settings.state_dir) / STORE_KEY_FILE)

        async def fetch() -> str:
            store = EtcdStore(settings.store or "", settings.store_prefix)
            try:
                entry = await store.get(POLICY_KEY)
            finally:
                await store.close()
            if entry is None:
                raise StoreError(f"no policy in the store ({settings.store}, prefix "
                                 f"{settings.store_prefix}) yet: `meshpilot apply DIR --store "
                                 f"{settings.store}` first")
            revision, files = unpack(key, entry.value)
            folder.write(revision, files)
            return revision

        try:
            log.info("policy revision %s from the store", _run_elsewhere(fetch()))
        except StoreUnavailable:
            if not folder.current.is_dir():
                raise
            log.warning("the store is unreachable: serving the last policy revision written "
                        "here, %s", folder.revision)
        # The folder is swapped whole on each revision, and reloaded then: no file watching.
        return replace(settings, policy=folder.current, watch=False)

    def _follow_policy(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.key == POLICY_KEY:
                self._policy_revision(entry)

    def _policy_revision(self, entry: Entry) -> None:
        assert self.policy_folder is not None
        try:
            revision, files = unpack(SealingKey.load(
                self.settings.store_key or Path(self.settings.state_dir or ".") / STORE_KEY_FILE),
                entry.value)
            if not self.policy_folder.write(revision, files):
                return
        except (StoreError, ValueError, KeyError, OSError) as e:
            log.error("the stored policy cannot be used (%s); the last one keeps serving", e)
            return
        log.info("policy revision %s from the store: reloading", revision)
        self._schedule_reload()

    @staticmethod
    def _refused(e: StoreError, created: bool, key_path: Path) -> NoReturn:
        if created:  # a key made just now opens nothing: do not leave it to mislead
            key_path.unlink(missing_ok=True)
            raise StoreError(f"{e}\n(this replica had no {key_path}; the store's state was "
                             f"sealed by another replica's: copy that one here)") from None
        raise e

    async def _start_store(self) -> None:
        """Follow and publish the shared state (discovery/shared.py, runtime/fleet.py)."""
        settings = self.settings
        store = self.store = EtcdStore(settings.store or "", settings.store_prefix)
        lease = self.replica_lease = ReplicaLease(store, settings.replica_lease_ttl)
        state = Path(settings.state_dir) if settings.state_dir is not None else None
        self.shared_registrations = SharedRegistrations(
            store, self.endpoints, state / _LAST_REGISTRATIONS if state else None)
        self.fleet = FleetStatus(store, lease, self.registry, self.replica_id,
                                 lambda: {"xds_address": self.xds_address})
        runs: list[Coroutine[object, object, None]] = [
            lease.run(), self.shared_registrations.run(), self.fleet.run()]
        if self.policy_folder is not None:
            follow = Mirror(store, "policy/", self._follow_policy,
                            lambda event: self._follow_policy(
                                [event.entry] if event.kind == "put" else []))
            runs.append(follow.run())
        if settings.docker:
            shared = self.shared_docker = SharedDocker(
                store, self.endpoints, state / _LAST_DOCKER if state else None)
            self.docker_election = Election(store, "docker", self.replica_id, lease,
                                            self._docker_elected, self._docker_deposed)
            runs += [shared.run(), self.docker_election.run()]
        loop = asyncio.get_running_loop()
        self._store_tasks = [loop.create_task(run) for run in runs]
        # The first policy load should include the fleet's registrations: wait a little for
        # the first listing; an unreachable store starts us on none (it follows when back).
        followers = [self.shared_registrations.follower,
                     *([self.shared_docker.follower] if self.shared_docker else [])]
        try:
            await asyncio.wait_for(followers[0].mirror.synced.wait(), 3.0)
        except TimeoutError:
            for follower in followers:
                if not follower.mirror.synced.is_set():
                    count = follower.load_cache()
                    log.warning("the store is unreachable: serving the last known %d %s "
                                "instance(s) saved by this replica until it is back", count,
                                follower.source)
        log.info("replica %s, sharing state through %s (prefix %s)", self.replica_id,
                 store.describe(), store.prefix)

    def _docker_elected(self, lease: int) -> None:
        assert self.shared_docker is not None
        self.shared_docker.elected(lease)
        self.docker = DockerSource(self.endpoints, network=self.settings.docker_network)
        self.docker.start()

    def _docker_deposed(self) -> None:
        docker, self.docker = self.docker, None
        if docker is not None:
            # Joining its thread blocks: do it off the loop.
            asyncio.get_running_loop().run_in_executor(None, docker.stop)
        if self.shared_docker is not None:
            self.shared_docker.deposed()

    def store_status(self) -> dict[str, object]:
        if self.store is None:
            return {}
        return {"replica": self.replica_id,
                "store": {"url": self.settings.store, "prefix": self.store.prefix,
                          "reachable": self.store.reachable},
                "policy_revision": None if self.policy_folder is None
                else self.policy_folder.revision,
                "docker_discovery": None if self.docker_election is None else {
                    "elected": self.docker_election.leader,
                    "holder": self.docker_election.holder}}

    def write_node_credentials(self) -> None:
        """Each (view, folder) of `settings.node_credentials`: a node token and the CA root,
        written atomically, readable by their owner only."""
        for view, folder in self.settings.node_credentials:
            folder.mkdir(parents=True, exist_ok=True)
            write_private(folder / "ca.crt", self.xds_ca_pem or self.identities.ca.trust_bundle)
            token = self.tokens.issue("node", view, ttl=_NODE_CREDENTIALS_TTL)
            write_private(folder / "token", (token + "\n").encode())
            log.info("node credentials of view %r written to %s", view, folder)

    def write_trust_bundles(self) -> None:
        """The trust bundle changed (a root rotation): rewrite the `ca.crt` of every
        --write-node-credentials folder (the CA folder's own is the rotation's to write)."""
        for _, folder in self.settings.node_credentials:
            if folder.is_dir():
                write_private(folder / "ca.crt",
                              self.xds_ca_pem or self.identities.ca.trust_bundle)

    async def start(self) -> None:
        """Load the policy, then serve xDS and admin. Port 0 in an address picks a free port."""
        self.write_node_credentials()
        self.controller.watch_endpoints(asyncio.get_running_loop())
        if self.docker is not None:
            self.docker.start()
        if self.settings.store is not None:
            await self._start_store()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._rotator = asyncio.get_running_loop().create_task(self._rotate_certificates())
        self._rotation_task = asyncio.get_running_loop().create_task(self.rotator.run())
        self._rollout_ticker = asyncio.get_running_loop().create_task(self._tick_rollouts())
        await self.controller.reload_async()
        if self.rate_limit_server is not None:
            await self.rate_limit_server.start()
        loop = asyncio.get_running_loop()
        self._grpc = grpc.aio.server(options=_GRPC_OPTIONS)
        self._grpc.add_generic_rpc_handlers(self.xds.handlers())
        self._grpc.add_generic_rpc_handlers([self.metrics_service.handler()])
        add_csds(self._grpc, self.registry, None if self.settings.insecure_xds else
                 OperatorCheck(lambda token: self.tokens.verify(token, "operator")))
        host, port = split_address(self.settings.xds_address)
        if self.xds_certificates is not None:
            bound = self._grpc.add_secure_port(f"{host}:{port}",
                                               self.xds_certificates.credentials())
            log.info("xDS %s; Envoys authenticate with %s", self.xds_certificates.describe(),
                     self.xds_auth)
        elif self._xds_issued_credentials is not None:
            bound = self._grpc.add_secure_port(f"{host}:{port}",
                                               self._xds_issued_credentials.credentials())
            log.info("xDS over TLS, with a certificate from the mesh CA; Envoys authenticate "
                     "with %s", self.xds_auth)
        else:
            bound = self._grpc.add_insecure_port(f"{host}:{port}")
            log.warning("xDS on %s:%s is PLAINTEXT and UNAUTHENTICATED (--insecure-xds): "
                        "anyone who can connect may claim any view and receive its config and "
                        "keys%s", host, bound,
                        "" if is_loopback(host) else ", and it is reachable beyond this host")
        self.xds_address = f"{host}:{bound}"
        await self._grpc.start()

        self._admin = web.AppRunner(make_app(self.admin_sources()), access_log=None)
        await self._admin.setup()
        host, port = split_address(self.settings.admin_address)
        self._warn_about_admin(host, port)
        site = web.TCPSite(self._admin, host, port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        if sockets:
            self.admin_address = f"{host}:{sockets[0].getsockname()[1]}"

        if self.settings.watch:
            debouncer = self._debouncer = Debouncer(
                self._schedule_reload, quiet=self.settings.debounce_quiet,
                max_wait=self.settings.debounce_max, loop=loop,
                leading=self.settings.debounce_leading, settled=self._writes_settled)
            self._watcher = PolicyWatcher(self.settings.policy, debouncer, loop)
            self._watcher.start()
            self._watch_tls_files()
        # Everything alive now (modules, protobuf descriptors, the first model) lives as long as
        # the process: keep it out of the collector's full passes, which otherwise cost ~35 ms
        # in the middle of a reload (seen in the convergence benchmark's tail).
        gcpause.freeze_for_life()
        self.serving = True
        log.info("xDS on %s, admin on http://%s", self.xds_address, self.admin_address)

    @property
    def xds_ca_pem(self) -> bytes | None:
        """The CA root an Envoy must trust to reach this xDS port: the mesh CA's, when this
        process issued its own serving certificate; None for plaintext or given files."""
        return self.identities.ca.trust_bundle if self.xds_self_issued is not None else None

    def _issue_xds_certificate(self) -> WorkloadCertificate:
        host, _ = split_address(self.settings.xds_address)
        names = ["meshpilot", "localhost", *self.settings.xds_server_names]
        ips = ["127.0.0.1", "::1"]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:  # a DNS name: the name Envoys dial
            if host not in names:
                names.append(host)
        else:
            if not address.is_unspecified and str(address) not in ips:
                ips.append(str(address))
        # Issued at every start, so its lifetime only has to outlast one process's uptime; by
        # the root every Envoy trusts (the old one until a root rotation finishes).
        return self.rotator_state.server_authority.issue_server(names, ips, time.time(),
                                                                _XDS_CERT_TTL)

    @property
    def rotator_state(self) -> RotationState:
        return self.rotator.state

    def _reissue_xds_certificate(self) -> None:
        """A root rotation finished: the serving certificate from the new root, used from the
        next TLS handshake on (streams already open keep theirs)."""
        if self._xds_issued_credentials is None:
            return
        self.xds_self_issued = self._issue_xds_certificate()
        self._xds_issued_credentials.replace(self.xds_self_issued.private_key,
                                             self.xds_self_issued.certificate_chain)
        log.info("xDS serving certificate re-issued from root %s",
                 self.rotator.state.server_authority.root_fingerprint)

    def _xds_authorization(self) -> tuple[str, Authorize | None]:
        """(what authenticates an Envoy, in words; the XdsServer's authorize hook)."""
        if self.settings.insecure_xds:
            return "none (--insecure-xds)", None
        if self.settings.xds_client_ca is not None:
            return (f"client certificates, identity check {self.identity_check}",
                    make_authorize(self.identity_check))
        return "node tokens", NodeTokenCheck(
            lambda token: self.tokens.verify(token, "node").subject)

    def _warn_about_admin(self, host: str, port: int) -> None:
        if self.settings.insecure_admin:
            log.warning("admin API: %s", _OPEN_ADMIN)
        if is_loopback(host):
            return
        if self.settings.insecure_admin:
            log.warning("admin API on %s:%s is reachable beyond this host and has NO "
                        "authentication (config dumps, status, registrations); bind it to "
                        "127.0.0.1 unless a proxy in front of it authenticates", host, port)
        else:
            log.warning("admin API on %s:%s is reachable beyond this host over plain HTTP: "
                        "its tokens cross the network unencrypted; put a TLS proxy in front "
                        "of it or bind it to 127.0.0.1", host, port)

    def admin_warnings(self) -> list[str]:
        """The opt-outs in force, as /readyz shows them."""
        warnings = [_OPEN_XDS] if self.settings.insecure_xds else []
        return warnings + ([_OPEN_ADMIN] if self.settings.insecure_admin else [])

    def admin_sources(self) -> AdminSources:
        """What the admin API may read of this process (and nothing else of it)."""
        return AdminSources(
            is_ready=lambda: self.controller.ready and self.serving,
            policy_status=lambda: self.controller.status.describe(),
            addresses=lambda: {"xds_address": self.xds_address,
                               "admin_address": self.admin_address},
            cache=self.cache, snapshot_of=self.snapshot_of, proxies=self.registry,
            endpoints=self.endpoints, metrics=self.metrics.registry,
            tokens=None if self.settings.insecure_admin else self.tokens,
            admin_hosts=self.settings.admin_hosts, warnings=self.admin_warnings,
            status_extra=lambda: {"prepush": self.prepush_status(),
                                  "edits": self.convergence.describe(),
                                  "rollouts": self.rollouts.status(),
                                  "envoy_metrics": self.envoy_metrics.describe()},
            ca=self.rotator,
            fleet=self.fleet.describe if self.fleet is not None else None,
            registrations=self.shared_registrations,
            replica=self.store_status if self.store is not None else None,
            request_rates=self.envoy_metrics.request_rates,
            rollouts=self.rollouts.describe, rollout_control=self.rollouts)

    def locate(self, view: str, type_url: str, name: str) -> str | None:
        """Where the serving policy made the view's resource: "file:line:col: Kind name:
        field", for status; None if nothing in it did (a plugin's, a CA identity)."""
        model = self.controller.model
        origins = origins_of(model, view, type_url, name) if model is not None else ()
        if not origins:
            return None
        first = origins[0]
        return ": ".join(part for part in (
            str(first.position), f"{first.kind} {first.name}" if first.name else first.kind,
            first.field) if part)

    def prepush_status(self) -> dict[str, Any]:
        """The pre-push check's record, and the Envoy builds connected beside the validator's:
        a check by another build than the fleet's may judge differently."""
        prepush = self.controller.prepush
        builds = sorted({p["envoy_version"] for p in self.registry.describe()
                         if p["envoy_version"]})
        if prepush is None:
            return {"enabled": False, "connected_envoy_versions": builds}
        out = prepush.status.describe()
        out["connected_envoy_versions"] = builds
        out["differing_envoy_versions"] = [b for b in builds if b != out["envoy_version"]]
        return out

    async def snapshot_of(self, view: str) -> Snapshot | None:
        """The view's snapshot, built (on a worker thread) if no one asked for it yet; None
        before a first valid policy. PolicyError if the view cannot be built (a plugin failing
        for it)."""
        return await self.controller.views.snapshot_of(view)

    def _schedule_reload(self, leading: bool = False) -> None:
        """The debouncer fired: at a save's first event (`leading`), or at a burst's end."""
        started = self._debouncer.fired_burst_started if self._debouncer else None
        if started is not None:  # a reload coalescing several bursts: from the first
            self._edit_started = min(started, self._edit_started or started)
        task = asyncio.get_running_loop().create_task(
            self.controller.reload_async(tentative=leading))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._watch_tls_files())
        task.add_done_callback(self._reload_done)

    def _writes_settled(self) -> None:
        """The quiet period after a leading-edge reload passed without events: a refusal it
        got is its outcome now (reported), and no edit follows from it."""
        self.controller.settle()
        if not self.controller.reloading and self.controller.held is None:
            self._edit_started = None

    def _reload_done(self, _: asyncio.Task[bool]) -> None:
        # Refused, or changed nothing: no edit to follow. A refusal held for the burst's end
        # (a file still being written) keeps the edit's start: its first event.
        if not self.controller.reloading and self.controller.held is None:
            self._edit_started = None

    def _rollout_policy(self) -> RolloutPolicy | None:
        """How the next edit is rolled out: as the serving policy's Rollout document says (so
        an edit cannot switch off its own rollout), else as --rollout does."""
        model = self.controller.model
        if model is not None and model.rollout is not None:
            return policy_of(model.rollout)
        return self.settings.rollout

    def _snapshots_replaced(self, pairs: list[tuple[Snapshot | None, Snapshot]]) -> None:
        self._replaced = pairs  # rolled out by `_edit_applied`, called right after

    def _settled(self, conn: Connection) -> None:
        self.convergence.settled(conn)
        self.rollouts.settled(conn)

    def _edit_applied(self, changed: list[Snapshot]) -> None:
        """A reload put `changed` in the cache (on the loop): an edit, if file events began it;
        rolled out in stages with --rollout."""
        started, self._edit_started = self._edit_started, None
        pairs, self._replaced = self._replaced, []
        edit = None
        if started is not None:  # else the first load, at start, or a reload of no edit
            edit = self.convergence.applied(started, changed, self.registry.connections())
        for rollout in self.rollouts.replaced(pairs, edit.id if edit is not None else None):
            log.info("rollout %s of view %r: canary %s of %d Envoy(s), watched %gs",
                     rollout.id, rollout.view, ", ".join(rollout.canary), rollout.total,
                     rollout.policy.watch)
        if edit is not None:
            log.info("edit %s applied %.0f ms after its file event, to %d Envoy(s) of %s",
                     edit.id, (edit.applied - started) * 1000, len(edit.targets),
                     ", ".join(edit.views))

    def _watch_tls_files(self) -> None:
        """Certificates and keys live outside the policy folder: watch the ones the newest load
        read, so replacing one reloads (a Secret-only change, pushed over SDS)."""
        if self._watcher is not None:
            self._watcher.watch_files(self.controller.tls_files)

    async def _rotate_certificates(self) -> None:
        """Renew each workload certificate at half-life and push it (SDS only) to its view.
        Polls at least every quarter TTL, so certificates issued meanwhile are never missed."""
        identities = self.identities
        while True:
            due = identities.next_renewal()
            wait = min(30.0, identities.ttl / 4)
            if due is not None:
                wait = min(wait, due - identities.clock())
            await asyncio.sleep(max(0.05, wait))
            # Issuing keys and certificates, then the views' new Secrets: off the loop; only
            # the swap into the cache runs on it. If a reload or an endpoint push replaced
            # the snapshots meanwhile, prepare again from theirs (they may hold the old key).
            renewed = await asyncio.to_thread(identities.renew_due, keep=self.cache.views())
            while renewed:
                generation = self.controller.generation
                prepared = await asyncio.to_thread(self.controller.prepare_identities, renewed)
                if self.controller.generation == generation:
                    self.controller.commit_identities(renewed, prepared)
                    break

    async def _tick_rollouts(self) -> None:
        """Judge the rollouts being watched (error rates, watch periods) four times a second."""
        while True:
            await asyncio.sleep(0.25)
            self.rollouts.tick()

    async def _sweep(self) -> None:
        """Remove registrations whose TTL lapsed, every `discovery_sweep` seconds."""
        while True:
            await asyncio.sleep(self.settings.discovery_sweep)
            for instance in self.endpoints.expire():
                log.info("registration %s of %s (%s) expired", instance.id, instance.service,
                         instance.address)

    async def stop(self) -> None:
        self.serving = False
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._rotator is not None:
            self._rotator.cancel()
        if self._rotation_task is not None:
            self._rotation_task.cancel()
        if self._rollout_ticker is not None:
            self._rollout_ticker.cancel()
        self.rotator.cancel()
        if self.docker_election is not None:
            await self.docker_election.resign()
        if self.docker is not None:
            await asyncio.to_thread(self.docker.stop)
        await self._stop_store()
        if self._watcher is not None:
            self._watcher.stop()
        for task in tuple(self._tasks):
            task.cancel()
        self.controller.views.cancel()
        self.controller.cancel_endpoint_updates()
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
        if self._admin is not None:
            await self._admin.cleanup()
        if self.rate_limit_server is not None:
            await self.rate_limit_server.stop()

    async def _stop_store(self) -> None:
        """Stop following; revoke the replica lease, so this replica's Envoys leave the
        fleet's status at once (a killed replica's go when the lease lapses)."""
        for task in self._store_tasks:
            task.cancel()
        # Bounded: a store client wedged inside (aetcd's watcher can deadlock on its own lock
        # when its stream dies with requests queued) must not keep the process from stopping.
        if self._store_tasks:
            _, pending = await asyncio.wait(self._store_tasks, timeout=3.0)
            for task in pending:
                log.warning("a store task did not stop within 3s; abandoned: %s", task)
        self._store_tasks = []
        if self.replica_lease is not None:
            await self.replica_lease.revoke()
        if self.store is not None:
            await self.store.close()

    async def run_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly: streams are closed, not cut, so
        Envoys reconnect at once (to another replica, say) instead of waiting for a timeout."""
        await self.start()
        try:
            await until_terminated()
        finally:
            await self.stop()


# Replicas share the CA root through the store only at start (store/sealed.py): a rotation on
# one replica would leave the others trusting the old root alone, and the rotated replica would
# refuse to restart against the store's. Refused until the store carries the rotation.
_ROTATION_WITH_STORE = ("the CA root cannot be rotated while replicas share it through --store: "
                        "not supported yet (docs/security.md, \"Not yet\")")


def serve(app: Meshpilot) -> None:
    """`asyncio.run(app.run_forever())`, except that the tasks still running after the app
    stopped are cancelled and waited for at most 5 s, not forever: a stop always ends."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(app.run_forever())
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=5.0))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), 5.0))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _run_elsewhere(coroutine: Coroutine[object, object, str]) -> str:
    """Run `coroutine` to its end on a loop of its own, in a thread: usable from synchronous
    code whether or not the caller's thread runs a loop already."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="meshpilot-store") as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def until_terminated() -> None:
    """Wait for SIGTERM or SIGINT (docker stop, systemd, Ctrl-C)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

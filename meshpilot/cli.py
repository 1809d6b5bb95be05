"""The `meshpilot` command. Each subcommand parses arguments and calls library code; no logic here
that a library user could not call directly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from meshpilot import __version__
from meshpilot.base import memory
from meshpilot.base.errors import PolicyError, PolicyIssue
from meshpilot.base.netutil import split_address, split_authority
from meshpilot.base.privatefiles import write_private
from meshpilot.base.units import parse_duration
from meshpilot.ca.authority import ROOT_CERT, CaError, check_trust_domain
from meshpilot.ca.tokens import KEY_FILE, TokenAuthority, TokenError, rotate_key
from meshpilot.ir.model import Model, ObjectStatus
from meshpilot.local.envoy_process import EnvoyError
from meshpilot.runtime.admin_client import AdminClient, AdminError, find_token
from meshpilot.xds.security import XdsSecurityError

if TYPE_CHECKING:
    from meshpilot.local.validator import EnvoyValidator
    from meshpilot.runtime.app import Settings
    from meshpilot.runtime.rollout import RolloutPolicy

# The commands import what they run (the server, the translators, the loader) when they run:
# `meshpilot status` or `token create` must not pay for gRPC, aiohttp and every proto first.


def _allow_files_from(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-files-from", action="append", default=[], metavar="DIR",
                        help="a folder besides the policy folder whose files (certificates, keys, "
                             "API keys, JWKS, htpasswd) the policy may name; repeatable. A file "
                             "anywhere else is refused")


def _view_and_folder(text: str) -> tuple[str, Path]:
    view, sep, folder = text.partition("=")
    if not sep or not view or not folder:
        raise argparse.ArgumentTypeError(f"expected VIEW=DIR, got {text!r}")
    return view, Path(folder)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _address(text: str) -> str:
    try:
        split_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _admin_host(text: str) -> str:
    try:
        split_authority(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:PORT, got {text!r}") from None
    return text


def _store_url(text: str) -> str:
    from meshpilot.store import StoreError, parse_store_url
    try:
        parse_store_url(text)
    except StoreError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _store_prefix(text: str) -> str:
    from meshpilot.store import StoreError, check_prefix
    try:
        return check_prefix(text)
    except StoreError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _trust_domain(text: str) -> str:
    try:
        return check_trust_domain(text)
    except CaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rollout(text: str) -> RolloutPolicy | None:
    from meshpilot.runtime.rollout import RolloutError, parse_rollout
    if text == "off":
        return None
    try:
        return parse_rollout(text)
    except RolloutError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_settings(args: argparse.Namespace) -> Settings:
    from meshpilot.runtime.app import Settings
    # With --policy-from-store, where the stored revision is written (runtime/policy_store.py).
    policy = Path(args.policy) if args.policy else \
        Path(args.state_dir) / "policy-from-store" / "current"
    return Settings(policy=policy, xds_address=args.xds_address,
                    admin_address=args.admin_address, debounce_quiet=args.debounce_quiet,
                    debounce_max=args.debounce_max, watch=not args.no_watch,
                    plugins=tuple(args.plugin), docker=args.docker,
                    docker_network=args.docker_network, xds_tls_cert=args.xds_tls_cert,
                    xds_tls_key=args.xds_tls_key, xds_client_ca=args.xds_client_ca,
                    xds_identity_check=args.xds_identity_check,
                    ca_dir=Path(args.ca_dir) if args.ca_dir else None,
                    state_dir=Path(args.state_dir), insecure_xds=args.insecure_xds,
                    xds_server_names=tuple(args.xds_server_name),
                    allowed_files=tuple(Path(d) for d in args.allow_files_from),
                    node_credentials=tuple(args.write_node_credentials),
                    insecure_admin=args.insecure_admin,
                    trust_domain=args.trust_domain, cert_ttl=args.cert_ttl,
                    admin_hosts=tuple(args.admin_host),
                    rate_limit_address=args.rate_limit_address, store=args.store,
                    store_prefix=args.store_prefix,
                    store_key=Path(args.store_key) if args.store_key else None,
                    replica_id=args.replica_id, policy_from_store=args.policy_from_store,
                    rollout=args.rollout, vhds=args.vhds,
                    debounce_leading=args.debounce_leading == "on")


def prepush_check(args: argparse.Namespace) -> EnvoyValidator | None:
    """Envoy's pre-push check for serve (None with --no-prepush-check); EnvoyError if no Envoy
    can be run."""
    from meshpilot.local.validator import EnvoyValidator
    if args.no_prepush_check:
        return None
    return EnvoyValidator(args.check_envoy, workers=args.check_workers)


def cmd_serve(args: argparse.Namespace) -> int:
    from meshpilot.runtime.app import Meshpilot, serve
    from meshpilot.store import StoreError
    from meshpilot.translators.plugins import PluginError
    if bool(args.policy) == bool(args.policy_from_store):
        print("meshpilot serve: give --policy DIR, or --policy-from-store (with --store)",
              file=sys.stderr)
        return 2
    if args.policy_from_store and not args.store:
        print("meshpilot serve: --policy-from-store needs --store", file=sys.stderr)
        return 2
    _setup_logging(args.log_level)
    logging.getLogger("meshpilot").info("memory allocator: %s", memory.allocator())
    try:
        check = prepush_check(args)
    except EnvoyError as e:
        print(f"meshpilot serve: the pre-push check needs Envoy: {e}; or pass "
              f"--no-prepush-check", file=sys.stderr)
        return 2
    try:
        try:
            app = Meshpilot(serve_settings(args), resource_check=check)
        except (PluginError, XdsSecurityError, CaError, StoreError) as e:
            print(e, file=sys.stderr)
            return 2
        with contextlib.suppress(KeyboardInterrupt):
            serve(app)
        return 0
    finally:
        if check is not None:
            check.close()  # the validate runs waiting for a bootstrap


def cmd_apply(args: argparse.Namespace) -> int:
    """Validate a folder, then store it as the revision `serve --policy-from-store` serves."""
    from meshpilot.runtime.policy_store import apply
    from meshpilot.store import StoreError
    from meshpilot.store.etcd import EtcdStore
    from meshpilot.store.sealed import KEY_FILE, SealingKey

    if not Path(args.policy).is_dir():
        print(f"meshpilot apply: {args.policy} is not a folder", file=sys.stderr)
        return 2
    model = _load(args.policy, args.allow_files_from)
    if model is None:
        return 1
    try:
        key = SealingKey.load(Path(args.store_key) if args.store_key
                              else Path(args.state_dir) / KEY_FILE)

        async def run() -> tuple[str, int, bool]:
            store = EtcdStore(args.store, args.store_prefix)
            try:
                return await apply(store, key, Path(args.policy))
            finally:
                await store.close()

        revision, count, changed = asyncio.run(run())
    except StoreError as e:
        print(f"meshpilot apply: {e}", file=sys.stderr)
        return 2
    print(f"{'applied' if changed else 'unchanged:'} revision {revision} ({count} file(s): "
          f"{len(model.services)} service(s), {len(model.gateways)} gateway(s), "
          f"{len(model.routes)} route(s))")
    return 0


def _load(policy: str, allowed_files: list[str]) -> Model | None:
    """The policy's model, or None after printing every problem to stderr."""
    from meshpilot.inputs.loader import load_policy
    try:
        return load_policy(policy, [Path(d) for d in allowed_files])
    except PolicyError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        print(f"{len(e.issues)} problem(s); nothing would be applied", file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    from meshpilot.runtime.controller import describe_object
    model = _load(args.policy, args.allow_files_from)
    if model is None:
        return 1
    for warning in model.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.envoy:
        refused = _envoy_check(model, args.check_envoy)
        if refused is None:
            return 2
        if refused:
            for issue in refused:
                print(issue, file=sys.stderr)
            print(f"{len(refused)} problem(s) Envoy refuses; nothing would be applied",
                  file=sys.stderr)
            return 1
    print(f"ok: {len(model.files)} file(s): {len(model.services)} service(s), "
          f"{len(model.gateways)} gateway(s), {len(model.routes)} route(s), "
          f"{len(model.raw)} raw resource(s)")
    # What loads but is not served as written (a route whose backend is missing, a listener
    # without its certificate): the status a user would otherwise only see once serving.
    _print_objects([describe_object(s) for s in model.statuses if not _healthy(s)])
    return 0


def _envoy_check(model: Model, envoy: str | None) -> list[PolicyIssue] | None:
    """What Envoy refuses of every Gateway's and sidecar's view (the pre-push check of serve,
    on everything); None after printing why it cannot check."""
    from meshpilot.local.diff import views_of
    from meshpilot.local.validator import EnvoyValidator
    from meshpilot.runtime.prepush import CheckFailed, PrePush
    from meshpilot.translators import Translation
    try:
        validator = EnvoyValidator(envoy)
    except EnvoyError as e:
        print(f"meshpilot validate --envoy: {e}", file=sys.stderr)
        return None
    try:
        translation = Translation(model)
        snapshots = [(None, translation.snapshot(view)) for view in sorted(views_of(model))]
        return list(PrePush(validator).issues(model, snapshots))
    except (PolicyError, CheckFailed) as e:
        print(f"meshpilot validate --envoy: {e}", file=sys.stderr)
        return None
    finally:
        validator.close()


def _healthy(status: ObjectStatus) -> bool:
    return all(c.status == ("False" if c.type == "Conflicted" else "True")
               for c in status.conditions)


def cmd_render(args: argparse.Namespace) -> int:
    from meshpilot.runtime.plugin_loader import load_plugins
    from meshpilot.translators import Translation
    from meshpilot.translators.plugins import PluginError
    from meshpilot.xds.render import snapshot_to_dict
    model = _load(args.policy, args.allow_files_from)
    if model is None:
        return 1
    try:
        snapshot = Translation(model, load_plugins(args.plugin)).snapshot(args.node_cluster)
    except PluginError as e:
        print(e, file=sys.stderr)
        return 1
    data = snapshot_to_dict(snapshot)
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """The folder's Services, Gateways and Routes as native documents on stdout; what the
    native language cannot say on stderr, each with its source file:line. Exit status: 0 the
    conversion is complete, 3 it is not (the text is printed all the same), 1 the folder does
    not load."""
    from meshpilot.inputs.convert import convert, only_gateway
    model = _load(args.policy, args.allow_files_from)
    if model is None:
        return 1
    if args.gateway is not None:
        try:
            model = only_gateway(model, args.gateway)
        except KeyError:
            known = ", ".join(g.name for g in model.gateways) or "none"
            print(f"no Gateway {args.gateway} in {args.policy} (Gateways: {known})",
                  file=sys.stderr)
            return 1
    folder = Path(args.policy)
    output = Path(args.output) if args.output else None
    if output is not None:
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            print(f"--output {output}: not an empty folder", file=sys.stderr)
            return 1
        output.mkdir(parents=True, exist_ok=True)
    conversion = convert(model, folder if folder.is_dir() else folder.parent,
                         [Path(d) for d in args.allow_files_from], output)
    if output is None:
        print(conversion.text, end="")
    else:
        (output / "policy.yaml").write_text(conversion.text)
        print(f"wrote {output / 'policy.yaml'}", file=sys.stderr)
    for old, new in sorted(conversion.names.items()):
        print(f"renamed: {old} -> {new}", file=sys.stderr)
    for unsaid in conversion.unsaid:
        where = unsaid.origin.position if unsaid.origin is not None else None
        print(f"{where}: {unsaid.what}: {unsaid.message}" if where else
              f"{unsaid.what}: {unsaid.message}", file=sys.stderr)
    if not conversion.complete:
        print(f"{len(conversion.unsaid)} thing(s) the native language does not say: the "
              "conversion is incomplete", file=sys.stderr)
        return 3
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from meshpilot.inputs.native.schema import json_schema
    print(json.dumps(json_schema(), indent=2, sort_keys=False))
    return 0


def bootstrap_security(args: argparse.Namespace) -> dict[str, str | None]:
    """How the Envoy reaches meshpilot: by default over TLS, trusting the mesh CA of
    --state-dir (or --ca-dir), with a node token for its view (read from --token-file, else
    signed here with the state folder's key); nothing of that with --insecure-xds.
    ValueError (or TokenError) says what is missing."""
    if args.insecure_xds:
        if args.xds_tls_ca or args.token_file:
            raise ValueError("--insecure-xds connects in plaintext without a token: it cannot "
                             "go with --xds-tls-ca or --token-file")
        return {"xds_tls_ca": None, "xds_sni": None, "xds_token": None}
    state = Path(args.state_dir)
    ca, sni = args.xds_tls_ca, args.xds_sni
    if args.xds_tls_cert:  # mutual TLS: the client certificate proves the view, no token
        token = Path(args.token_file).read_text().strip() if args.token_file else None
        return {"xds_tls_ca": ca, "xds_sni": sni, "xds_token": token}
    if ca is None:
        ca_file = Path(args.ca_dir or state) / ROOT_CERT
        if not ca_file.is_file():
            raise ValueError(f"no {ca_file}: start `meshpilot serve --state-dir {state}` once "
                             f"(it creates the CA), or pass --xds-tls-ca")
        ca = str(ca_file.resolve())
        sni = sni or "meshpilot"  # a name on the certificate meshpilot issues itself
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    else:
        if not (state / KEY_FILE).is_file():  # never create one here: no server would hold it
            raise ValueError(f"no token key in {state}: pass --token-file (from `meshpilot "
                             f"token create node {args.node_cluster}`) or --state-dir")
        token = TokenAuthority.load(state).issue("node", args.node_cluster, ttl=args.token_ttl)
    return {"xds_tls_ca": ca, "xds_sni": sni, "xds_token": token}


def _istio_node(args: argparse.Namespace) -> dict[str, Any] | None:
    """`--workload NS/NAME` or `--gateway NS/NAME --label K=V`: the node cluster (the view) and
    id Istio's names give (docs/istio.md), and Istio-like node metadata."""
    from meshpilot.inputs.istio import hosts as istio_hosts
    which = "workload" if args.workload else "gateway" if args.gateway else None
    if which is None:
        if args.label:
            raise ValueError("--label goes with --gateway")
        if not args.node_cluster or not args.node_id:
            raise ValueError("--node-id and --node-cluster are required (or --workload / "
                             "--gateway)")
        return None
    if args.node_cluster:
        raise ValueError(f"--{which} decides the node cluster: leave --node-cluster out")
    namespace, slash, name = (args.workload or args.gateway).partition("/")
    if not slash or not namespace or not name:
        raise ValueError(f"--{which} takes NAMESPACE/NAME")
    labels = dict(label.partition("=")[::2] for label in args.label)
    if which == "workload":
        if args.label:
            raise ValueError("a workload's labels are its WorkloadEntry's: leave --label out")
        args.node_cluster = istio_hosts.workload_view(name, namespace)
    else:
        if not labels or any(not k for k in labels):
            raise ValueError("--gateway needs its labels: --label istio=ingressgateway")
        args.node_cluster = istio_hosts.gateway_view(tuple(sorted(labels.items())))
    args.node_id = args.node_id or f"{'sidecar' if which == 'workload' else 'router'}~" \
                                   f"{name}.{namespace}"
    return {"NAME": name, "NAMESPACE": namespace, "LABELS": labels}


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from meshpilot.local.bootstrap import bootstrap_yaml
    try:
        metadata = _istio_node(args)
        security = bootstrap_security(args)
        text = bootstrap_yaml(node_id=args.node_id, node_cluster=args.node_cluster,
                              node_metadata=metadata,
                              xds_addresses=[split_address(a) for a in args.xds_address],
                              admin_address=split_address(args.admin_address), delta=args.delta,
                              ads=not args.no_ads, xds_tls_cert=args.xds_tls_cert,
                              xds_tls_key=args.xds_tls_key,
                              stats_flush_interval=None if args.no_metrics_service
                              else args.stats_flush_interval, **security)
    except (ValueError, OSError) as e:
        print(f"meshpilot bootstrap: {e}", file=sys.stderr)
        return 2
    if args.output:
        # It holds the node token: readable by its owner only, like a key file.
        write_private(Path(args.output), text.encode())
    else:
        print(text, end="")
    return 0


def admin_client(args: argparse.Namespace) -> AdminClient:
    """The admin API as the commands that call it (status, ...) reach it: with --token-file,
    else $MESHPILOT_TOKEN, else a token minted from --state-dir's key (docs/operations.md)."""
    token, source = find_token(args.token_file, args.state_dir)
    return AdminClient(args.admin_address, token, source=source)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        admin = admin_client(args)
        fleet = admin.get_json("/debug/proxies")
        proxies = fleet["proxies"]
        status = admin.get_json("/debug/status")
    except AdminError as e:
        print(e, file=sys.stderr)
        return e.code
    if args.json:
        print(json.dumps({"status": status, "proxies": proxies}, indent=2))
        return 0
    policy = status["policy"]
    print(f"policy {policy['path']}: {'ok' if policy['ok'] else 'REJECTED'}")
    for line in policy["errors"]:
        print(f"  {line}")
    _print_prepush(status.get("prepush"))
    for line in status.get("edits", {}).get("lines", []):
        print(line)
    for line in status.get("rollouts", {}).get("lines", []):
        print(line)
    if status.get("ca"):
        _print_ca(status["ca"])
    _print_objects(policy.get("objects") or [])
    if "replica" in status:  # one of several replicas: every replica's Envoys are listed
        print(f"replica {status['replica']}, store {status['store']['url']}"
              f"{'' if status['store']['reachable'] else ' (UNREACHABLE)'}")
    if fleet.get("store_error"):
        print(f"  {fleet['store_error']}")
    replicas = any("replica" in p for p in proxies)
    print(f"{'NODE':24} {'VIEW':16} {'VARIANT':12} {'TYPE':10} {'STATUS':9} {'SENT':17} "
          f"{'ACKED':17}{' REPLICA' if replicas else ''}".rstrip())
    for p in proxies:
        for short, t in sorted(p["types"].items()):
            print(f"{p['node_id'][:24]:24} {str(p['view'])[:16]:16} {p['variant']:12} {short:10} "
                  f"{t['status']:9} {t['version_sent']!s:17} {t['version_acked']!s:17}"
                  f"{' ' + str(p.get('replica')) if replicas else ''}".rstrip())
            if t["last_rejection"]:
                print(f"{'':24} rejected {t['last_rejection']['version']}: "
                      f"{t['last_rejection']['message']}")
            for held in t.get("held_back", []):
                where = f" ({held['origin']})" if held.get("origin") else ""
                print(f"{'':24} held back {short} {held['name']!r}{where}: {held['message']}")
    return 0 if policy["ok"] and not any(
        t["status"] in ("NACKED", "HELD") for p in proxies for t in p["types"].values()) else 1


def _print_prepush(prepush: dict[str, Any] | None) -> None:
    if not prepush:
        return
    builds = ", ".join(prepush.get("connected_envoy_versions", [])) or "none connected"
    if not prepush.get("enabled"):
        print(f"pre-push check: off (connected Envoys: {builds})")
        return
    print(f"pre-push check: Envoy {prepush.get('envoy_version') or '?'}, "
          f"{prepush.get('resources_checked', 0)} resource(s) checked, "
          f"{prepush.get('refused', 0)} refused (connected Envoys: {builds})")
    differing = prepush.get("differing_envoy_versions") or []
    if differing:
        print(f"  NOTE: connected Envoys of build {', '.join(differing)} differ from the "
              "validator's: they may judge some resources differently (NACKs are contained)")


def cmd_diff(args: argparse.Namespace) -> int:
    from meshpilot.local.diff import DiffError, compare_folders, compare_git, compare_server, report
    from meshpilot.runtime.plugin_loader import load_plugins
    from meshpilot.translators.plugins import PluginError
    folder = Path(args.policy)
    allowed = [Path(d) for d in args.allow_files_from]
    try:
        plugins = load_plugins(args.plugin)
        if args.against is not None:
            against = f"folder {args.against}"
            diffs = compare_folders(Path(args.against), folder, args.view, allowed, plugins)
        elif args.against_git is not None:
            against = f"git revision {args.against_git}"
            diffs = compare_git(folder, args.against_git, args.view, allowed, plugins)
        else:
            args.admin_address = args.admin_address or "127.0.0.1:18001"
            admin = admin_client(args)
            against = f"the server at {args.admin_address}"
            diffs = compare_server(admin, folder, args.view, allowed, plugins)
    except (DiffError, AdminError, PluginError) as e:
        print(f"meshpilot diff: {e}", file=sys.stderr)
        return 2
    print(report(diffs, against), end="")
    return 1 if any(diffs) else 0


def _print_rollouts(rollouts: list[dict[str, Any]]) -> None:
    if not rollouts:
        print("no rollouts")
        return
    print(f"{'ID':7} {'VIEW':16} {'STATE':12} {'CANARY':>6} {'ERRORS':>14} {'THRESHOLD':>9} "
          f"REASON")
    for r in rollouts:
        rate = "-" if r["error_rate"] is None else \
            f"{r['error_rate']:.1%} of {r['requests']:.0f}"
        left = f" ({r['remaining']:.0f}s left)" if r.get("remaining") is not None else ""
        print(f"{r['id']:7} {r['view'][:16]:16} {r['state']:12} "
              f"{len(r['canary']):>2}/{r['total']:<3} {rate:>14} {r['threshold']:>9.1%} "
              f"{r['reason'] or ''}{left}".rstrip())
        print(f"{'':7} canary: {', '.join(r['canary'])}")


def cmd_rollout_status(args: argparse.Namespace) -> int:
    try:
        rollouts = admin_client(args).get_json("/debug/rollouts")["rollouts"]
    except AdminError as e:
        print(f"meshpilot rollout status: {e}", file=sys.stderr)
        return e.code
    if args.json:
        print(json.dumps(rollouts, indent=2))
    else:
        _print_rollouts(rollouts)
    return 0


def cmd_rollout_act(args: argparse.Namespace) -> int:
    action = args.rollout_command
    try:
        ended = admin_client(args).post_json(f"/v1/rollouts/{action}",
                                             {"view": args.view} if args.view else {})
    except AdminError as e:
        print(f"meshpilot rollout {action}: {e}", file=sys.stderr)
        return e.code
    _print_rollouts(ended["rollouts"])
    return 0


def _print_ca(ca: dict[str, Any]) -> None:
    """The mesh CA's roots and the rotation phase, as `status` and `ca` print them."""
    step = f" ({ca['step']})" if ca.get("step") else ""
    print(f"mesh CA: rotation phase {ca['phase']}{step}")
    for root in ca["roots"]:
        count = ca.get("workload_certificates", {}).get(root["fingerprint"], 0)
        serving = ", serves xDS" if root["fingerprint"] == ca.get("xds_serving_root") else ""
        print(f"  {root['role']:20} {root['fingerprint']}  expires {root['not_after']}  "
              f"{count} workload certificate(s){serving}")
    if ca.get("finish_after"):
        print(f"  finishes by itself after {ca['finish_after']}")
    elif ca["phase"] != "idle":
        print("  finishes by hand: meshpilot ca finish-rotation")
    if ca.get("last_error"):
        print(f"  last step failed: {ca['last_error']}")


def _overlap(text: str) -> str | float:
    return "manual" if text == "manual" else _duration(text)


def cmd_ca_status(args: argparse.Namespace) -> int:
    try:
        ca = admin_client(args).get_json("/debug/ca")
    except AdminError as e:
        print(e, file=sys.stderr)
        return e.code
    if args.json:
        print(json.dumps(ca, indent=2))
    else:
        _print_ca(ca)
    return 0


def cmd_ca_rotate_root(args: argparse.Namespace) -> int:
    try:
        admin = admin_client(args)
        ca = admin.post_json("/v1/ca/rotate-root",
                             {"overlap": args.overlap, "reissue": args.reissue})
    except AdminError as e:
        print(f"meshpilot ca rotate-root: {e}", file=sys.stderr)
        return e.code
    _print_ca(ca)
    print("new root in every trust bundle; it signs once every Envoy holds it. Restart or "
          "re-bootstrap the Envoys before the rotation finishes, so that their bootstrap's "
          "CA file (ca.crt, rewritten now) holds the new root too (docs/operations.md)")
    return 0


def cmd_ca_finish_rotation(args: argparse.Namespace) -> int:
    try:
        admin = admin_client(args)
        ca = admin.post_json("/v1/ca/finish-rotation")
        deadline = time.monotonic() + args.wait
        while ca["phase"] != "idle" and time.monotonic() < deadline:
            time.sleep(0.2)
            ca = admin.get_json("/debug/ca")
    except AdminError as e:
        print(f"meshpilot ca finish-rotation: {e}", file=sys.stderr)
        return e.code
    _print_ca(ca)
    if ca["phase"] != "idle":
        print(f"still finishing after {args.wait:g}s (waiting for Envoys to take the new "
              "certificates); `meshpilot ca status` shows when it is done", file=sys.stderr)
        return 1
    return 0


def _print_objects(objects: list[dict[str, Any]]) -> None:
    """Gateway API objects (and any format's) with their conditions, as kubectl shows them:
    a condition that holds as expected shows its type, any other its status and reason too."""
    if not objects:
        return
    kind_width = max(14, *(len(item["kind"]) for item in objects))  # BackendTLSPolicy: 16
    name_width = max(len(item["name"]) for item in objects)
    parent_width = max(len("PARENT"), *(len(item["parent"]) for item in objects))
    print(f"{'KIND':{kind_width}} {'NAME':{name_width}} {'PARENT':{parent_width}} CONDITIONS")
    for item in objects:
        conditions = " ".join(f"{c['type']}={c['status']}"
                              + (f"({c['reason']})" if c["reason"] != c["type"] else "")
                              for c in item["conditions"])
        extra = f" attachedRoutes={item['attachedRoutes']}" if "attachedRoutes" in item else ""
        print(f"{item['kind']:{kind_width}} {item['name']:{name_width}} "
              f"{item['parent']:{parent_width}} {conditions}{extra}  ({item['at']})")
        for c in item["conditions"]:
            if c["message"]:
                print(f"{'':{kind_width}} {c['type']}: {c['message']}")


def cmd_token_create(args: argparse.Namespace) -> int:
    try:
        # The key must exist already: a token signed with a key that no server holds (a
        # mistyped --state-dir) would only fail later, at the server.
        tokens = TokenAuthority.load(Path(args.state_dir))
        print(tokens.issue(args.kind, args.subject or "", ttl=args.ttl))
    except TokenError as e:
        print(f"meshpilot token create: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_token_rotate_key(args: argparse.Namespace) -> int:
    try:
        TokenAuthority.load(Path(args.state_dir))  # the folder a server made, not a typo
        rotate_key(Path(args.state_dir))
    except (TokenError, OSError) as e:
        print(f"meshpilot token rotate-key: {e}", file=sys.stderr)
        return 2
    print(f"new token key in {Path(args.state_dir) / 'token.key'}: every token issued so far "
          "no longer works (running servers use the new key at their next request)",
          file=sys.stderr)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from meshpilot.local.up import run_up

    _setup_logging(args.log_level)
    policy = Path(args.policy)
    if not policy.exists():
        print(f"no policy at {policy}; run from the repository root or give a folder",
              file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_up(policy, node_cluster=args.node_cluster,
                           xds_address=args.xds_address, admin_address=args.admin_address,
                           envoy_admin_port=args.envoy_admin_port,
                           state_dir=Path(args.state_dir)))
    print("stopped.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshpilot", description=__doc__)
    parser.add_argument("--version", action="version", version=f"meshpilot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve xDS from a policy folder, reloading it on change")
    p.add_argument("--policy", default=None,
                   help="policy folder (or one file); required unless --policy-from-store")
    p.add_argument("--xds-address", type=_address, default="127.0.0.1:18000")
    p.add_argument("--admin-address", type=_address, default="127.0.0.1:18001")
    p.add_argument("--debounce-quiet", type=_duration, default=0.1, metavar="DURATION",
                   help="apply a burst of file changes after this long without one (100ms)")
    p.add_argument("--debounce-max", type=_duration, default=10.0, metavar="DURATION",
                   help="apply a burst at most this long after its first change (10s)")
    p.add_argument("--debounce-leading", choices=("on", "off"), default="on",
                   help="on: a save while the folder was quiet is applied at once, what follows "
                        "it within --debounce-quiet once at the end; off: every change waits "
                        "for the quiet period (on)")
    p.add_argument("--no-watch", action="store_true", help="load once; do not watch the folder")
    p.add_argument("--state-dir", metavar="DIR", default=".meshpilot",
                   help="meshpilot's credentials: the token key (token.key) and the mesh CA's "
                        "root (ca.crt, ca.key), created here on first start (.meshpilot)")
    p.add_argument("--insecure-xds", action="store_true",
                   help="serve xDS in plaintext to anyone who connects: no TLS, no "
                        "authentication, every view's config and keys to any client. Warned "
                        "about at start and in /readyz")
    p.add_argument("--insecure-admin", action="store_true",
                   help="open the admin API's debug, config and write endpoints to anyone "
                        "who can reach it, without a token. Warned about at start and in /readyz")
    p.add_argument("--admin-host", type=_admin_host, action="append", default=[], metavar="NAME",
                   help="also answer admin requests whose Host header is NAME (any port) or "
                        "NAME:PORT; repeat for several. Others are refused (DNS rebinding)")
    p.add_argument("--ca-dir", metavar="DIR", default=None,
                   help="the mesh CA's root (ca.crt, ca.key), if not in --state-dir: created "
                        "here on first start, loaded afterwards (docs/security.md)")
    p.add_argument("--trust-domain", type=_trust_domain, default="cluster.local",
                   help="SPIFFE trust domain of workload identities (cluster.local)")
    p.add_argument("--cert-ttl", type=_duration, default=24 * 3600.0, metavar="DURATION",
                   help="lifetime of workload certificates, renewed at half-life (24h)")
    p.add_argument("--plugin", action="append", default=[], metavar="NAME",
                   help="run this plugin (an entry point of group meshpilot.plugins); repeat "
                        "for several, applied in order. None by default")
    p.add_argument("--docker", action="store_true",
                   help="discover containers labelled meshpilot.service and meshpilot.port "
                        "(docs/discovery.md); the engine from DOCKER_HOST or the local socket")
    p.add_argument("--docker-network", metavar="NAME", default=None,
                   help="with --docker: reach containers at their IP on this network (default: "
                        "the host port meshpilot.port is published on)")
    _allow_files_from(p)
    p.add_argument("--write-node-credentials", action="append", default=[],
                   type=_view_and_folder, metavar="VIEW=DIR",
                   help="at start, write a node token for VIEW and the CA root into DIR "
                        "(token, ca.crt), for an Envoy that reads them there (`meshpilot "
                        "bootstrap --token-file DIR/token --xds-tls-ca DIR/ca.crt`); repeatable")
    p.add_argument("--xds-server-name", action="append", default=[], metavar="NAME",
                   help="a DNS name Envoys reach meshpilot by, put on the certificate it issues "
                        "itself (besides meshpilot and localhost); repeatable")
    p.add_argument("--xds-tls-cert", metavar="FILE", default=None,
                   help="serve xDS over TLS with this PEM certificate (chain) instead of one "
                        "issued by the mesh CA; re-read when it changes, for new connections")
    p.add_argument("--xds-tls-key", metavar="FILE", default=None,
                   help="the private key of --xds-tls-cert")
    p.add_argument("--xds-client-ca", metavar="FILE", default=None,
                   help="mutual TLS: clients must present a certificate signed by this CA")
    p.add_argument("--xds-identity-check", choices=["strict", "off"], default=None,
                   help="strict: a node's cluster (its view) must be an identity its client "
                        "certificate proves (SPIFFE sa name, else DNS SAN, else CN), or the "
                        "stream is refused. Default: strict with --xds-client-ca, else off")
    p.add_argument("--no-prepush-check", action="store_true",
                   help="push what a reload changes without checking it with `envoy --mode "
                        "validate` first (docs/operations.md); a NACK is then contained")
    p.add_argument("--vhds", action="store_true",
                   help="send delta ADS Envoys each route configuration's virtual hosts as "
                        "resources of their own (Envoy's VHDS), so a one-host edit sends one "
                        "virtual host, not the whole configuration; SotW Envoys are unchanged")
    p.add_argument("--check-envoy", metavar="PATH", default=None,
                   help="the Envoy binary of the pre-push check (default: $MESHPILOT_ENVOY, "
                        "the envoy beside this Python, then PATH)")
    p.add_argument("--check-workers", type=int, default=2, metavar="N",
                   help="pre-push checks run side by side (2)")
    p.add_argument("--rate-limit-address", type=_address, default=None, metavar="HOST:PORT",
                   help="serve the policy's shared rate limits (rate_limit.shared) as an Envoy "
                        "rate limit service here, plaintext gRPC: a policy Service with "
                        "protocol grpc at this address is what the limits name")
    p.add_argument("--store", type=_store_url, default=None, metavar="etcd://HOST:PORT[,...]",
                   help="share registrations, Envoy status, the token key and the CA root with "
                        "every replica started with the same store and prefix (docs/"
                        "operations.md, \"Running replicas\"). Default: this process's memory")
    p.add_argument("--store-prefix", type=_store_prefix, default="/meshpilot", metavar="PATH",
                   help="the store's key prefix: one fleet per prefix (/meshpilot)")
    p.add_argument("--store-key", metavar="FILE", default=None,
                   help="the key sealing the credentials in the store, the same file on every "
                        "replica (default: --state-dir/store.key, created by the first replica)")
    p.add_argument("--replica-id", metavar="NAME", default=None,
                   help="this replica's name in the store and in `meshpilot status` "
                        "(default: HOST-XDSPORT-random)")
    p.add_argument("--policy-from-store", action="store_true",
                   help="with --store, instead of --policy: serve the revision `meshpilot "
                        "apply` stored, and each new one (written to --state-dir)")
    p.add_argument("--rollout", type=_rollout, default=None, metavar="SETTINGS",
                   help="roll each edit out in stages: canary=10%%,watch=30s,error-rate=5%%,"
                        "min-requests=10 (each optional; these are the defaults), or off "
                        "(docs/operations.md, \"Staged rollouts\")")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("apply", help="validate a policy folder and store it for replicas "
                                     "started with --policy-from-store")
    p.add_argument("policy", metavar="DIR")
    _allow_files_from(p)
    p.add_argument("--store", type=_store_url, required=True, metavar="etcd://HOST:PORT[,...]")
    p.add_argument("--store-prefix", type=_store_prefix, default="/meshpilot", metavar="PATH")
    p.add_argument("--store-key", metavar="FILE", default=None,
                   help="the replicas' store key (default: --state-dir/store.key)")
    p.add_argument("--state-dir", metavar="DIR", default=".meshpilot",
                   help="a replica's state folder, holding store.key (.meshpilot)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("validate", help="check a policy folder; print every problem")
    p.add_argument("policy")
    _allow_files_from(p)
    p.add_argument("--envoy", action="store_true",
                   help="also check every Gateway's and sidecar's resources with Envoy itself "
                        "(envoy --mode validate), as serve does before it pushes a change")
    p.add_argument("--check-envoy", metavar="PATH", default=None,
                   help="with --envoy: the Envoy binary (default: as for serve)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the Envoy resources one view would receive")
    p.add_argument("policy")
    _allow_files_from(p)
    p.add_argument("--node-cluster", required=True, help="the view (an Envoy's node cluster)")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.add_argument("--plugin", action="append", default=[], metavar="NAME",
                   help="as for serve: include this plugin's resources")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("convert", help="print a policy folder (Gateway API, Istio, native) as "
                                       "native documents; what cannot be said goes to stderr")
    p.add_argument("policy")
    p.add_argument("--to", choices=["native"], required=True,
                   help="the language to write (native: meshpilot's own)")
    p.add_argument("--gateway", metavar="NAME", default=None,
                   help="only this Gateway (as named in its view: NAMESPACE/NAME for Gateway "
                        "API), its Routes, the Services and the mesh's Routes")
    p.add_argument("-o", "--output", metavar="DIR", default=None,
                   help="write DIR/policy.yaml instead of printing it, and every "
                        "certificate, key and CA bundle (Secrets' too) under DIR/certs, keys "
                        "readable by their owner only")
    _allow_files_from(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("schema", help="print the JSON Schema of the policy language (for editors)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("bootstrap", help="print an Envoy bootstrap that points at meshpilot")
    p.add_argument("--node-id", help="required unless --workload or --gateway gives one")
    p.add_argument("--node-cluster", help="the view; or --workload / --gateway")
    p.add_argument("--workload", metavar="NS/NAME",
                   help="the sidecar of Istio WorkloadEntry NAME in namespace NS "
                        "(view NAME.NS, docs/istio.md)")
    p.add_argument("--gateway", metavar="NS/NAME",
                   help="an Istio ingress gateway; its --label's pick the Istio Gateways "
                        "(view: the labels, docs/istio.md)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label of the --gateway (repeatable): istio=ingressgateway")
    p.add_argument("--xds-address", type=_address, action="append", required=True,
                   help="HOST:PORT of meshpilot; repeat for several replicas")
    p.add_argument("--admin-address", type=_address, required=True,
                   help="HOST:PORT for Envoy's own admin")
    p.add_argument("--delta", action="store_true", help="incremental (delta) xDS")
    p.add_argument("--no-ads", action="store_true",
                   help="a stream per type (CDS, LDS, ...) instead of one ADS stream; resources "
                        "must then name meshpilot as their config source (not ads: {})")
    p.add_argument("--state-dir", metavar="DIR", default=".meshpilot",
                   help="meshpilot's state folder (as given to serve): the CA root the Envoy "
                        "trusts, and the key that signs its node token (.meshpilot)")
    p.add_argument("--ca-dir", metavar="DIR", default=None,
                   help="the mesh CA's folder, if serve was given --ca-dir")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help="the node token (`meshpilot token create node VIEW`), instead of "
                        "signing one with --state-dir's key")
    p.add_argument("--token-ttl", type=_duration, default=365 * 24 * 3600.0, metavar="DURATION",
                   help="lifetime of the node token signed here (365d; Envoy sends the one "
                        "in its bootstrap until restarted with a new one)")
    p.add_argument("--insecure-xds", action="store_true",
                   help="plaintext, no token: for a meshpilot serving with --insecure-xds")
    p.add_argument("--xds-tls-ca", metavar="FILE", default=None,
                   help="trust this CA for meshpilot's certificate (path read by Envoy) "
                        "instead of the mesh CA of --state-dir")
    p.add_argument("--xds-tls-cert", metavar="FILE", default=None,
                   help="with --xds-tls-ca: Envoy's client certificate (mutual TLS)")
    p.add_argument("--xds-tls-key", metavar="FILE", default=None,
                   help="the private key of --xds-tls-cert (path read by Envoy)")
    p.add_argument("--xds-sni", metavar="NAME", default=None,
                   help="SNI sent to meshpilot and the DNS name its certificate must carry "
                        "(default: the --xds-address host when it is a DNS name)")
    p.add_argument("--stats-flush-interval", type=_duration, default=2.0, metavar="DURATION",
                   help="how often the Envoy streams its stats to meshpilot's metrics service "
                        "(error rates for rollouts, request rates; 2s)")
    p.add_argument("--no-metrics-service", action="store_true",
                   help="no stats sink: the Envoy sends meshpilot no stats (rollouts then judge "
                        "by ACKs and NACKs only)")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("status", help="connected Envoys and where each stands")
    p.add_argument("--admin-address", type=_address, default="127.0.0.1:18001")
    _admin_client_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("diff", help="what applying a policy folder would change in Envoy terms, "
                                     "per view; exit 1 if anything, 0 if nothing, 2 on error")
    p.add_argument("policy", help="the policy folder (or file) to apply")
    against = p.add_mutually_exclusive_group()
    against.add_argument("--server", dest="admin_address", type=_address, nargs="?",
                         const="127.0.0.1:18001", default=None, metavar="ADMIN_ADDRESS",
                         help="against the running server, through its admin API (the "
                              "default, at 127.0.0.1:18001), as an operator")
    against.add_argument("--against", metavar="DIR", default=None,
                         help="against another policy folder")
    against.add_argument("--against-git", metavar="REV", default=None,
                         help="against the folder as it is in git revision REV (HEAD, main, ...)")
    p.add_argument("--view", action="append", default=[], metavar="VIEW",
                   help="compare this view too (a node cluster); every Gateway and sidecar "
                        "Service, and the server's views, are compared anyway")
    _allow_files_from(p)
    p.add_argument("--plugin", action="append", default=[], metavar="NAME",
                   help="as for serve: include this plugin's resources")
    _admin_client_arguments(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("token", help="issue tokens for the admin API and xDS; rotate their key")
    token = p.add_subparsers(dest="token_command", required=True)
    p = token.add_parser("create", help="print a new token signed with --state-dir's key")
    p.add_argument("kind", choices=["operator", "registration", "node"],
                   help="operator: the whole admin API; registration SERVICE: that Service's "
                        "self-registrations; node VIEW: an Envoy's xDS stream for that view")
    p.add_argument("subject", nargs="?", default="", metavar="SERVICE|VIEW",
                   help="the Service (registration) or view (node); none for operator")
    p.add_argument("--ttl", type=_duration, default=24 * 3600.0, metavar="DURATION",
                   help="how long the token works (24h; at most 366 days, 8784h)")
    p.add_argument("--state-dir", metavar="DIR", default=".meshpilot",
                   help="the folder of the server's token.key, as given to serve (.meshpilot)")
    p.set_defaults(func=cmd_token_create)
    p = token.add_parser("rotate-key", help="a new token key: every token stops working")
    p.add_argument("--state-dir", metavar="DIR", default=".meshpilot",
                   help="the folder of the server's token.key, as given to serve (.meshpilot)")
    p.set_defaults(func=cmd_token_rotate_key)

    p = sub.add_parser("ca", help="the mesh CA: its roots, and rotating the root")
    ca = p.add_subparsers(dest="ca_command", required=True)
    p = ca.add_parser("status", help="the roots (fingerprints, expiry) and the rotation phase")
    p.add_argument("--admin-address", type=_address, default="127.0.0.1:18001")
    _admin_client_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ca_status)
    p = ca.add_parser("rotate-root", help="start a root rotation: a new root, trusted beside "
                                          "the old one, then signing (docs/operations.md)")
    p.add_argument("--admin-address", type=_address, default="127.0.0.1:18001")
    _admin_client_arguments(p)
    p.add_argument("--overlap", type=_overlap, default=24 * 3600.0, metavar="DURATION",
                   help="how long both roots stay trusted once the new one signs, then the "
                        "old one is dropped by itself (24h); `manual`: only by "
                        "`meshpilot ca finish-rotation`")
    p.add_argument("--reissue", choices=["now", "at-renewal"], default="now",
                   help="re-issue every workload certificate from the new root at once (now), "
                        "or at each one's renewal (at-renewal)")
    p.set_defaults(func=cmd_ca_rotate_root)
    p = ca.add_parser("finish-rotation", help="drop the old root from every trust bundle")
    p.add_argument("--admin-address", type=_address, default="127.0.0.1:18001")
    _admin_client_arguments(p)
    p.add_argument("--wait", type=_duration, default=120.0, metavar="DURATION",
                   help="wait this long for the finish to complete (120s)")
    p.set_defaults(func=cmd_ca_finish_rotation)

    p = sub.add_parser("rollout", help="staged rollouts: their state; promote or abort one")
    rollout = p.add_subparsers(dest="rollout_command", required=True)
    p = rollout.add_parser("status", help="the rollouts being watched and the newest ended")
    p.add_argument("--admin-address", type=_address, default="127.0.0.1:18001")
    _admin_client_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rollout_status)
    for action, text in (("promote", "promote the rollout being watched to every Envoy now"),
                         ("abort", "roll the rollout being watched back now")):
        p = rollout.add_parser(action, help=text)
        p.add_argument("--admin-address", type=_address, default="127.0.0.1:18001")
        _admin_client_arguments(p)
        p.add_argument("--view", default=None, help="only this view's (default: every view's)")
        p.set_defaults(func=cmd_rollout_act)

    p = sub.add_parser("up", help="control plane + real Envoy + demo backends, for a first try")
    p.add_argument("policy", nargs="?", default="examples/quickstart")
    p.add_argument("--node-cluster", default="edge")
    p.add_argument("--xds-address", type=_address, default="127.0.0.1:18000")
    p.add_argument("--admin-address", type=_address, default="127.0.0.1:18001")
    p.add_argument("--envoy-admin-port", type=int, default=19000)
    p.add_argument("--state-dir", metavar="DIR", default=".meshpilot",
                   help="the token key and the mesh CA's root, as for serve (.meshpilot)")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_up)
    return parser


def _admin_client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help="send the token in FILE (default: $MESHPILOT_TOKEN, else one minted "
                        "for 5 minutes with the key in --state-dir, if readable)")
    p.add_argument("--state-dir", metavar="DIR", default=".meshpilot",
                   help="the server's --state-dir, whose token key signs a token for this "
                        "command when no other is given (.meshpilot)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command == "serve":
        # A long-running server's objects on the C library's malloc, so that memory freed by a
        # smaller policy goes back to the system (base/memory.py); PYTHONMALLOC set (to any
        # value, e.g. pymalloc) keeps the interpreter's choice. Replaces this process. The
        # `meshpilot` command did this before importing this module (meshpilot/launch.py);
        # here for a caller of cli.main() that did not.
        memory.use_system_allocator(sys.argv[1:])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

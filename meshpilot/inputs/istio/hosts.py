"""Names: how an Istio host names a Service of the model, and what a workload's or an ingress
gateway's Envoy is called (its view, the node cluster its bootstrap writes).

    ServiceEntry host reviews.default.svc.cluster.local, port 9080
        -> Service `reviews.default.svc.cluster.local:9080` (always with the port: a
           ServiceEntry with two ports is two Services), subset cluster `...:9080/v1`
    a host in a VirtualService or DestinationRule of namespace NS
        `reviews` -> `reviews.NS.svc.cluster.local`; a name with dots is taken as written
        (`reviews.default` and `reviews.default.svc` also find `reviews.default.svc.cluster
        .local`, as Kubernetes' DNS search would)
    WorkloadEntry reviews-v1 in namespace default -> view `reviews-v1.default` (Istio's
        pod.namespace), `meshpilot bootstrap --workload default/reviews-v1`
    Gateway selector {istio: ingressgateway} -> view `istio=ingressgateway` (labels sorted,
        joined by ","), `meshpilot bootstrap --gateway NS/NAME --label istio=ingressgateway`

These names are stable: they change only when the host, port, or name does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from meshpilot.ir.model import Labels

CLUSTER_DOMAIN = "svc.cluster.local"
ROOT_NAMESPACE = "istio-system"  # the mesh-wide policies' namespace (Istio's default)
DEFAULT_OUTBOUND_PORT = 15001
# The ingress gateway's identity: Istio's default installation's service account.
GATEWAY_IDENTITY = "ns/istio-system/sa/istio-ingressgateway-service-account"


def qualified(host: str, namespace: str) -> str:
    """A host as written in namespace `namespace`, made fully qualified."""
    return host if "." in host or host == "*" else f"{host}.{namespace}.{CLUSTER_DOMAIN}"


def lookup(host: str, namespace: str, known: Mapping[str, object]) -> str | None:
    """The ServiceEntry host `host` (written in `namespace`) stands for, if any."""
    for candidate in (qualified(host, namespace), host, f"{host}.{CLUSTER_DOMAIN}",
                      f"{host}.cluster.local"):
        if candidate in known:
            return candidate
    return None


def service_name(host: str, port: int) -> str:
    return f"{host}:{port}"


def host_values(host: str, port: int, only_port: bool) -> tuple[str, ...]:
    """The Host header values an application may send for this host and port: the short
    forms Kubernetes' DNS search finds, each with the port, and without it when the host has
    this one port only."""
    forms = [host]
    suffix = f".{CLUSTER_DOMAIN}"
    if host.endswith(suffix):
        short = host[:-len(suffix)]  # reviews.default
        forms += [short.split(".")[0], short, f"{short}.svc"]
    found = {f"{form}:{port}" for form in forms}
    if only_port:
        found.update(forms)
    found.discard(service_name(host, port))  # the Service's own name is a domain already
    return tuple(sorted(found))


def workload_view(name: str, namespace: str) -> str:
    return f"{name}.{namespace}"


def gateway_view(selector: Labels) -> str:
    return ",".join(f"{key}={value}" for key, value in selector)


def selects(selector: Labels, labels: Labels | Sequence[tuple[str, str]]) -> bool:
    """Whether every label of `selector` is among `labels` (an empty selector selects all)."""
    have = set(labels)
    return all(pair in have for pair in selector)


def spiffe_path(namespace: str, service_account: str | None) -> str:
    return f"ns/{namespace}/sa/{service_account or 'default'}"

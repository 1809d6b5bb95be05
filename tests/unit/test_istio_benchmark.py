"""The bookinfo edit benchmark compares like with like: its Istio and native policies give each
sidecar the same routes (the same clusters per host, by subset) before and after the edit."""

from __future__ import annotations

from pathlib import Path

from envoy.config.route.v3.route_pb2 import RouteConfiguration

from benchmarks.istio_mesh import (
    _bookinfo_workloads,
    bookinfo_edits,
    bookinfo_istio,
    bookinfo_native,
)
from meshpilot.base.types import ROUTE
from meshpilot.inputs.loader import load_policy
from meshpilot.translators import Translation


def _routed(folder: Path, files: dict[str, str], view: str) -> dict[str, str]:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    config = RouteConfiguration()
    config.ParseFromString(Translation(load_policy(folder)).snapshot(view).get(ROUTE)[
        "outbound"].body)
    # host (before any `.`/`:`) -> the subset its (last) route sends to
    return {vhost.name.split(".")[0].split(":")[0]: vhost.routes[-1].route.cluster.rsplit("/")[-1]
            for vhost in config.virtual_hosts}


def test_istio_and_native_bookinfo_route_alike(tmp_path: Path) -> None:
    for reviews in ("v1", "v3"):
        istio = _routed(tmp_path / f"istio-{reviews}", bookinfo_istio(reviews),
                        "productpage-v1.default")
        native = _routed(tmp_path / f"native-{reviews}", bookinfo_native(reviews),
                         "productpage-v1")
        # and both pass unknown hosts through (Istio's default ALLOW_ANY)
        assert istio == native == {"details": "v1", "productpage": "v1", "ratings": "v1",
                                   "reviews": reviews, "outbound|unknown": "outbound|passthrough"}
    assert len(_bookinfo_workloads()) == 6


def test_the_edit_changes_every_sidecar(tmp_path: Path) -> None:
    result = bookinfo_edits(2, tmp_path)
    for side in ("istio", "native"):
        figures = result[side]
        assert isinstance(figures, dict) and len(figures["raw_ms"]) == 2
        # each of the six sidecars gets at least its outbound route configuration anew
        assert figures["changed_resources"] >= 6

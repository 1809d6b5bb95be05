"""Memory after a large policy is replaced by a small one: nothing of the large one is kept
alive (the previous translation's reuse tables, memo tables), the freed pages are handed back
(glibc's malloc_trim), and `meshpilot serve` runs on the C library's malloc, where that works
(base/memory.py). The RSS figures are benchmarks/shrink.py's, not a test's."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from meshpilot.base import memory
from meshpilot.ir import model as ir
from meshpilot.runtime.controller import RELEASE_AFTER_DROP, Controller
from meshpilot.translators.reuse import BuiltCluster
from meshpilot.xds.cache import SnapshotCache

GATEWAY = """kind: Gateway
name: edge
listeners: [{name: http, port: 10000}]
"""


def _services(prefix: str, count: int) -> str:
    docs = [GATEWAY]
    for i in range(count):
        name = f"{prefix}-{i:04d}"
        docs.append(f"""kind: Service
name: {name}
endpoints:
  - {{address: '127.0.{i >> 8}.{i & 255}:8000', labels: {{version: v1}}}}
  - {{address: '127.1.{i >> 8}.{i & 255}:8000', labels: {{version: v2}}}}
subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}
---
kind: Route
name: {name}
gateway: edge
hosts: [{name}.example.com]
rules:
  - backends: [{{service: {name}, subset: v1, weight: 90}}, {{service: {name}, subset: v2, weight: 10}}]
""")
    return "---\n".join(docs)


def _served(controller: Controller) -> int:
    snapshot = controller.cache.get("edge")
    assert snapshot is not None
    return sum(snapshot.counts().values())


def test_a_shrinking_reload_keeps_nothing_of_the_large_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "p.yaml").write_text(_services("small", 5))
    controller = Controller(policy, SnapshotCache())
    assert controller.reload()
    controller.snapshot_blocking("edge")
    (policy / "p.yaml").write_text(_services("big", 700))
    assert controller.reload()
    large = _served(controller)
    assert large > RELEASE_AFTER_DROP and controller.memory_releases == 0  # grew: nothing to do
    (policy / "p.yaml").write_text(_services("small", 5))
    assert controller.reload()
    assert 2 * _served(controller) <= large
    assert controller.memory_releases == 1
    gc.collect()
    # The previous translation's reuse tables no longer keep the large policy's clusters (the
    # new translation lent from them while its views were built, then let them go).
    kept = [o for o in gc.get_objects() if type(o) is BuiltCluster and o.service is not None
            and o.service.name.startswith("big-")]
    assert kept == []
    assert ir._is_ip_literal.cache_info().currsize == 0  # its hosts were dropped too
    # And the small policy is served whole.
    snapshot = controller.cache.get("edge")
    assert snapshot is not None and "small-0004/v2" in snapshot.get(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster")


def test_release_runs_the_clear_functions_and_trims_on_glibc() -> None:
    cleared: list[bool] = []
    released = memory.release((lambda: cleared.append(True),))
    assert cleared == [True]
    assert released is (memory._MALLOC_TRIM is not None)
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert released  # this machine's glibc has malloc_trim


def test_the_allocator_variable_set_keeps_the_process() -> None:
    # With PYTHONMALLOC set (to any value) it must return: were it to exec, this test process
    # would be replaced.
    memory.use_system_allocator(["--version"], {"PYTHONMALLOC": "pymalloc"})
    assert memory.allocator() == (os.environ.get("PYTHONMALLOC") or "pymalloc")


def test_a_process_without_the_variable_replaces_itself_on_malloc() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    script = ("import os; from meshpilot.base import memory; "
              "memory.use_system_allocator(['--version']); print('not replaced')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    if memory._MALLOC_TRIM is None:  # not glibc: nothing to gain, the process stays
        assert done.stdout.strip() == "not replaced"
    else:
        assert done.stdout.strip().startswith("meshpilot ")  # `python -m meshpilot --version`

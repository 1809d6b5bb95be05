"""The store's parts against a real etcd (started by the `etcd` fixture, loopback ports): the
sealed credentials, the lease election, the replica lease, hostile entries, the fleet-wide
limits of registrations. End to end with replicas and Envoys: tests/e2e/test_replicas.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from meshpilot.discovery.registry import EndpointRegistry, LimitExceeded, Limits
from meshpilot.discovery.shared import SharedRegistrations
from meshpilot.store import (
    Entry,
    StoreError,
    StoreUnavailable,
    check_prefix,
    parse_store_url,
)
from meshpilot.store.election import Election
from meshpilot.store.etcd import EtcdStore, Mirror, ReplicaLease
from meshpilot.store.sealed import SealingKey, share_files


async def until(check, timeout: float = 10.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.05)


def test_store_urls_and_prefixes_are_checked() -> None:
    assert parse_store_url("etcd://a:1,[::1]:2379") == [("a", 1), ("::1", 2379)]
    for bad in ("http://a:1", "etcd://", "etcd://a", "etcd://a:0", "etcd://a:1,b:x"):
        with pytest.raises(StoreError, match="--store"):
            parse_store_url(bad)
    assert check_prefix("/mesh/prod") == "/mesh/prod"
    for bad in ("mesh", "/mesh/", "/a\nb"):
        with pytest.raises(StoreError, match="--store-prefix"):
            check_prefix(bad)


def test_an_unreachable_store_says_so() -> None:
    async def run() -> None:
        store = EtcdStore("etcd://127.0.0.1:1", timeout=0.5)
        with pytest.raises(StoreUnavailable, match=r"the store \(etcd at 127.0.0.1:1, prefix "
                                                    r"/meshpilot\) is unreachable"):
            await store.put("x", b"1")
        assert store.reachable is False
        await store.close()
    asyncio.run(run())


def test_the_credentials_are_published_sealed_and_loaded_by_the_next_replica(
        etcd, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    names = ("token.key", "ca.crt", "ca.key")

    def files(folder: Path) -> list[tuple[str, Path]]:
        return [(n, folder / n) for n in names]

    def create(folder: Path):  # type: ignore[no-untyped-def]
        def make() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            for n in names:
                if not (folder / n).exists():
                    (folder / n).write_bytes(f"{n} of {folder.name}".encode())
        return make

    async def run() -> None:
        store = EtcdStore(etcd.url)
        key, created = SealingKey.load_or_create(tmp_path / "store.key")
        assert created and (tmp_path / "store.key").stat().st_mode & 0o777 == 0o600
        said = await share_files(store, key, files(first), create(first))
        assert said.startswith("published")
        # In etcd: ciphertext only, nothing of the plaintext.
        entry = await store.get("state/files")
        assert entry is not None and b"token.key of a" not in entry.value
        assert b"dG9rZW4ua2V5IG9mIGE" not in entry.value  # nor its base64

        said = await share_files(store, key, files(second), create(second))
        assert said.startswith("loaded")
        for n in names:
            assert (second / n).read_bytes() == (first / n).read_bytes()
            assert (second / n).stat().st_mode & 0o777 == 0o600

        # A replica with a file of its own that differs is refused, its file untouched.
        third = tmp_path / "c"
        third.mkdir()
        (third / "ca.key").write_bytes(b"another CA")
        with pytest.raises(StoreError, match=r"differs from the ca\.key the other replicas use"):
            await share_files(store, key, files(third), create(third))
        assert (third / "ca.key").read_bytes() == b"another CA"

        # An optional file (CA rotation state, say) absent on both sides is fine; present on
        # one side only, it is refused like a difference.
        optional = frozenset({"rotation.json"})
        said = await share_files(store, key, [*files(second), ("rotation.json",
                                                             second / "rotation.json")],
                                 create(second), optional)
        assert said.startswith("loaded")
        (second / "rotation.json").write_text("{}")
        with pytest.raises(StoreError, match="not part of the state the other replicas use"):
            await share_files(store, key, [*files(second), ("rotation.json",
                                                          second / "rotation.json")],
                              create(second), optional)

        # Another key opens nothing.
        other, _ = SealingKey.load_or_create(tmp_path / "other.key")
        with pytest.raises(StoreError, match="does not open the store's state/files"):
            await share_files(store, other, files(tmp_path / "d"), create(tmp_path / "d"))
        # A sealed blob moved under another name does not open either (the name is sealed in).
        await store.put("state/elsewhere", entry.value)
        with pytest.raises(StoreError, match="does not open"):
            key.open("state/elsewhere", entry.value)
        await store.close()
    asyncio.run(run())


def test_one_candidate_leads_and_another_takes_over_when_its_lease_goes(etcd) -> None:
    async def run() -> None:
        stores = [EtcdStore(etcd.url), EtcdStore(etcd.url)]
        leases = [ReplicaLease(s, ttl=2.0) for s in stores]
        events: list[tuple[str, str]] = []
        elections = [Election(s, "docker", name, lease,
                              lambda _l, n=name: events.append(("elected", n)),
                              lambda n=name: events.append(("deposed", n)), poll=0.1)
                     for s, lease, name in zip(stores, leases, ("a", "b"), strict=True)]
        tasks = [asyncio.create_task(x.run()) for x in (*leases, *elections)]
        await until(lambda: sum(e.leader for e in elections) == 1, what="one leader")
        await asyncio.sleep(0.5)
        assert sum(e.leader for e in elections) == 1  # and only one, however often they try
        leader = next(e for e in elections if e.leader)
        other = next(e for e in elections if not e.leader)
        assert other.holder == leader.candidate
        # The leader's replica dies: its lease is no longer renewed (a killed process).
        index = elections.index(leader)
        tasks[index].cancel()
        tasks[2 + index].cancel()
        await until(lambda: other.leader, timeout=10, what="the other candidate to take over")
        assert events[-1] == ("elected", other.candidate)
        # A clean stop resigns at once.
        await other.resign()
        assert (await stores[1 - index].get("elections/docker")) is None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in stores:
            await s.close()
    asyncio.run(run())


def test_registrations_are_shared_with_their_limits_and_hostile_entries_are_ignored(
        etcd, caplog) -> None:
    async def run() -> None:
        replicas = []
        for _ in range(2):
            store = EtcdStore(etcd.url)
            registry = EndpointRegistry(limits={"registration": Limits(max_instances=2)})
            shared = SharedRegistrations(store, registry)
            replicas.append((store, registry, shared, asyncio.create_task(shared.run())))
        (store_a, reg_a, a, _), (_, reg_b, b, _) = replicas
        await until(lambda: a.follower.mirror.synced.is_set() and
                    b.follower.mirror.synced.is_set(), what="both following")
        first, created = await a.register("api", "10.0.0.1", 80, {"v": "1"}, 30)
        assert created and first.ttl is not None and first.ttl >= 30
        await until(lambda: reg_b.get(first.id), what="B to see A's registration")
        assert reg_b.endpoints() == reg_a.endpoints()
        # The same address from B: the same registration (one id), labels updated.
        again, created = await b.register("api", "10.0.0.1", 80, {"v": "2"}, 30)
        assert not created and again.id == first.id
        await until(lambda: dict(reg_a.get(first.id).labels) == {"v": "2"},  # type: ignore[union-attr]
                    what="A to see the new labels")
        # The limit counts the fleet's registrations: one more from B, then no more from A.
        await b.register("api", "10.0.0.2", 80, {}, 30)
        await until(lambda: len(reg_a.instances("api")) == 2, what="A to count two")
        with pytest.raises(LimitExceeded, match="2 endpoints"):
            await a.register("api", "10.0.0.3", 80, {}, 30)
        # A heartbeat on either replica; a deletion on B removes it on A too.
        assert (await a.renew(first.id)).id == first.id
        assert await b.remove(first.id) is not None
        await until(lambda: reg_a.get(first.id) is None, what="A to drop the deleted one")
        with pytest.raises(KeyError):
            await a.renew(first.id)
        # Hostile or broken entries written straight into etcd are logged and skipped.
        await store_a.put("registrations/api/junk", b"{not json")
        await store_a.put("registrations/api/bad-ip",
                          json.dumps({"id": "x", "service": "api", "host": "evil.example",
                                      "port": 1, "labels": {}, "ttl": 1}).encode())
        await asyncio.sleep(0.5)
        assert {i.host for i in reg_b.instances("api")} == {"10.0.0.2"}
        assert "malformed store entry registrations/api/junk" in caplog.text
        for store, _, _, task in replicas:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()
    asyncio.run(run())


def test_a_mirror_lists_again_after_etcd_restarts(etcd) -> None:
    async def run() -> None:
        store = EtcdStore(etcd.url)
        seen: dict[str, bytes] = {}

        def reset(entries):  # type: ignore[no-untyped-def]
            seen.clear()
            seen.update({e.key: e.value for e in entries})

        def event(e):  # type: ignore[no-untyped-def]
            if e.kind == "put":
                seen[e.entry.key] = e.entry.value
            else:
                seen.pop(e.entry.key, None)

        mirror = Mirror(store, "things/", reset, event)
        task = asyncio.create_task(mirror.run())
        await until(mirror.synced.is_set, what="synced")
        await store.put("things/a", b"1")
        await until(lambda: seen == {"things/a": b"1"}, what="the put")
        await asyncio.to_thread(etcd.stop)
        await until(lambda: not mirror.synced.is_set(), what="the lost watch")
        assert seen == {"things/a": b"1"}  # the last known state stays
        await asyncio.to_thread(etcd.start)
        await until(mirror.synced.is_set, timeout=20, what="following again")
        await store.put("things/b", b"2")
        await store.delete("things/a")
        await until(lambda: seen == {"things/b": b"2"}, what="changes after the restart")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
    asyncio.run(run())


def test_serve_refuses_bad_store_flags_and_an_unreachable_first_start(tmp_path: Path,
                                                                       capsys) -> None:
    from meshpilot.cli import build_parser
    from meshpilot.runtime.app import Meshpilot, Settings

    for flags, message in ((["--store", "http://127.0.0.1:2379"], "expected etcd://"),
                           (["--store", "etcd://127.0.0.1:1", "--store-prefix", "mesh"],
                            "--store-prefix")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--policy", str(tmp_path), *flags])
        assert message in capsys.readouterr().err
    # No credentials here yet and no store to get the fleet's from: refuse, after waiting.
    (tmp_path / "policy").mkdir()
    settings = Settings(policy=tmp_path / "policy", state_dir=tmp_path / "state",
                        store="etcd://127.0.0.1:1", store_wait=0.5)
    with pytest.raises(StoreUnavailable, match=r"unreachable.*\(waited 0.5s\)"):
        Meshpilot(settings)
    assert not (tmp_path / "state" / "store.key").exists()  # no key left that seals nothing
    with pytest.raises(StoreError, match="--store needs a --state-dir"):
        Meshpilot(Settings(policy=tmp_path / "policy", store="etcd://127.0.0.1:1"))


class _SilentStore:
    """A store whose watch never yields (a stream the server ended without an error, as
    aetcd then leaves it) and whose first listing fails with a bug, not a StoreError."""

    prefix = "/meshpilot"

    def __init__(self) -> None:
        self.listings = 0
        self.entries: list[Entry] = []

    async def get_prefix(self, sub: str) -> tuple[list[Entry], int]:
        self.listings += 1
        if self.listings == 1:
            raise RuntimeError("a surprise")
        return list(self.entries), self.listings

    async def watch(self, sub: str, start_revision: int):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()
        yield  # pragma: no cover (never reached: an async generator)


def test_a_mirror_survives_a_surprise_and_lists_again_when_its_watch_falls_silent() -> None:
    async def run() -> None:
        store = _SilentStore()
        seen: list[list[bytes]] = []
        mirror = Mirror(store, "things/", lambda entries: seen.append(  # type: ignore[arg-type]
            [e.value for e in entries]), lambda event: None, resync=0.2)
        task = asyncio.create_task(mirror.run())
        await until(mirror.synced.is_set, what="synced after the surprise")
        # A change the silent watch never tells: the next listing finds it.
        store.entries.append(Entry("things/a", b"1", 0, 2))
        await until(lambda: seen and seen[-1] == [b"1"], what="the resync")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(run())

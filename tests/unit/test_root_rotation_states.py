"""The root rotation's state machine (meshpilot/ca/rotation.py), its state on disk, and the
workload identities' part in it: every transition, every refusal, restarts mid-rotation, and
which certificates each phase's trust bundle accepts (verified with cryptography's X.509 path
validation, as a TLS peer would)."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from meshpilot.ca import CaError, CertificateAuthority, WorkloadIdentities
from meshpilot.ca.authority import ROOT_CERT, ROOT_KEY, WorkloadCertificate
from meshpilot.ca.rotation import (
    ADDING_ROOT,
    IDLE,
    OVERLAP,
    REISSUE_AT_RENEWAL,
    STATE_FILE,
    RootStore,
    RotationError,
    RotationState,
    new_root,
)

NOW = 1_700_000_000.0
TD = "example.org"
_sha = hashes.SHA256()


def _bundle(ca: CertificateAuthority) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(ca.trust_bundle)


def accepts(bundle: list[x509.Certificate], issued: WorkloadCertificate, now: float) -> bool:
    """Whether a peer trusting `bundle` accepts `issued` at `now`: one of the roots signed it
    (name and signature) and both are valid then. (cryptography's path validation applies the
    Web PKI's profile, which SPIFFE certificates do not follow; Envoy's is in tests/e2e.)"""
    leaf = x509.load_pem_x509_certificate(issued.certificate_chain)
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    for root in bundle:
        try:
            leaf.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if all(c.not_valid_before_utc <= at <= c.not_valid_after_utc for c in (leaf, root)):
            return True
    return False


@pytest.fixture
def old() -> CertificateAuthority:
    return CertificateAuthority.create(TD, now=dt.datetime.fromtimestamp(NOW - 3600, dt.UTC))


def _rotated(old: CertificateAuthority) -> tuple[RotationState, RotationState, RotationState,
                                                   RotationState]:
    idle = RotationState.single(old)
    adding = idle.start(new_root(TD, NOW), NOW, overlap=600)
    overlap = adding.promote(NOW + 10)
    return idle, adding, overlap, overlap.finish(NOW + 700)


def test_each_phase_trusts_before_it_signs_and_drops_only_what_nothing_uses(old) -> None:
    idle, adding, overlap, done = _rotated(old)
    new = adding.other
    assert new is not None and new.root_fingerprint != old.root_fingerprint
    # Two roots of one trust domain never share a subject.
    assert new.root.subject != old.root.subject
    # idle: A signs, [A]
    assert idle.phase == IDLE and idle.authority.root_fingerprint == old.root_fingerprint
    assert [r["fingerprint"] for r in idle.describe()["roots"]] == [old.root_fingerprint]
    assert len(_bundle(idle.authority)) == 1
    # adding-root: A still signs; the bundle is [A, B]
    assert adding.phase == ADDING_ROOT
    assert adding.authority.root_fingerprint == old.root_fingerprint
    assert [c.fingerprint(_sha) for c in _bundle(adding.authority)] == \
        [old.root.fingerprint(_sha), new.root.fingerprint(_sha)]
    assert adding.server_authority is adding.signer
    # overlap: B signs, [B, A]; the xDS serving certificate still comes from A
    assert overlap.phase == OVERLAP
    assert overlap.authority.root_fingerprint == new.root_fingerprint
    assert [c.fingerprint(_sha) for c in _bundle(overlap.authority)] == \
        [new.root.fingerprint(_sha), old.root.fingerprint(_sha)]
    assert overlap.server_authority.root_fingerprint == old.root_fingerprint
    assert overlap.finish_after == NOW + 10 + 600
    assert not overlap.finish_due(NOW + 609) and overlap.finish_due(NOW + 610)
    # finished: B alone, serving too
    assert done.phase == IDLE and done.other is None
    assert [c.fingerprint(_sha) for c in _bundle(done.authority)] == [new.root.fingerprint(_sha)]
    assert done.server_authority.root_fingerprint == new.root_fingerprint
    assert not done.finish_due(NOW + 10_000)


def test_which_certificates_each_bundle_accepts(old) -> None:
    idle, adding, overlap, done = _rotated(old)
    spiffe = old.spiffe_id("reviews")
    from_old = adding.authority.issue(spiffe, NOW, 3600)
    from_new = overlap.authority.issue(spiffe, NOW + 20, 3600)
    assert from_old.root == old.root_fingerprint
    assert from_new.root == overlap.signer.root_fingerprint
    at = NOW + 30
    # Before the rotation, only A's certificates verify.
    assert accepts(_bundle(idle.authority), from_old, at)
    assert not accepts(_bundle(idle.authority), from_new, at)
    # Both bundles of the rotation accept both, so old and new peers talk in any mix.
    for state in (adding, overlap):
        assert accepts(_bundle(state.authority), from_old, at)
        assert accepts(_bundle(state.authority), from_new, at)
    # After the finish, a certificate from the old root is refused.
    assert accepts(_bundle(done.authority), from_new, at)
    assert not accepts(_bundle(done.authority), from_old, at)


def test_refused_transitions_say_why(old) -> None:
    idle, adding, overlap, done = _rotated(old)
    with pytest.raises(RotationError, match="already in progress"):
        adding.start(new_root(TD, NOW), NOW)
    with pytest.raises(RotationError, match="already in progress"):
        overlap.start(new_root(TD, NOW), NOW)
    with pytest.raises(RotationError, match="nothing to promote"):
        idle.promote(NOW)
    with pytest.raises(RotationError, match="nothing to promote"):
        overlap.promote(NOW)
    with pytest.raises(RotationError, match="no rotation to finish"):
        idle.finish(NOW)
    with pytest.raises(RotationError, match="not signing yet"):
        adding.finish(NOW)
    with pytest.raises(RotationError, match="reissue must be"):
        idle.start(new_root(TD, NOW), NOW, reissue="later")
    with pytest.raises(RotationError, match="negative"):
        idle.start(new_root(TD, NOW), NOW, overlap=-1)
    with pytest.raises(RotationError, match="trust domain"):
        idle.start(new_root("other.org", NOW), NOW)
    with pytest.raises(RotationError, match="is the current root"):
        idle.start(old, NOW)
    # A finished rotation can be followed by another.
    again = done.start(new_root(TD, NOW + 800), NOW + 800)
    assert again.phase == ADDING_ROOT and again.signer.root_fingerprint == \
        done.signer.root_fingerprint


def test_a_manual_overlap_never_finishes_by_itself(old) -> None:
    state = RotationState.single(old).start(new_root(TD, NOW), NOW, overlap=None).promote(NOW)
    assert state.finish_after is None and not state.finish_due(NOW + 10 * 365 * 86400)
    assert state.describe()["finish_after"] is None


def test_describe_shows_fingerprints_and_expiry_never_a_key(old) -> None:
    _, adding, overlap, _ = _rotated(old)
    described = overlap.describe()
    assert described["phase"] == OVERLAP
    assert [r["role"] for r in described["roots"]] == ["signing", "trusted (previous)"]
    assert described["roots"][1]["fingerprint"] == old.root_fingerprint
    assert described["roots"][1]["not_after"] == old.root.not_valid_after_utc.isoformat()
    assert described["xds_serving_root"] == old.root_fingerprint
    assert [r["role"] for r in adding.describe()["roots"]] == ["signing", "trusted (next)"]
    text = json.dumps(described)
    assert "PRIVATE KEY" not in text and old.key_pem().decode() not in text


# ---- on disk -----------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_survives_a_restart_in_every_phase(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "ca", TD)
    idle = store.load_or_create()  # first start: a root, as before rotations existed
    assert idle.phase == IDLE and not (tmp_path / "ca" / STATE_FILE).exists()
    assert RootStore(tmp_path / "ca", TD).load_or_create().signer.root_fingerprint == \
        idle.signer.root_fingerprint

    adding = idle.start(new_root(TD, NOW), NOW, overlap=3600, reissue=REISSUE_AT_RENEWAL)
    store.save(adding)
    folder = tmp_path / "ca"
    for name in (STATE_FILE, ROOT_CERT, ROOT_KEY):
        assert _mode(folder / name) == 0o600, name
    reloaded = RootStore(folder, TD).load_or_create()
    assert reloaded == adding  # phase, times, reissue mode
    assert [r.root_fingerprint for r in reloaded.roots] == [r.root_fingerprint for r in adding.roots]
    assert (folder / ROOT_CERT).read_bytes() == adding.authority.trust_bundle
    # A reader of the plain files (`bootstrap`, a CA loaded without the state) sees the bundle.
    plain = CertificateAuthority.load(folder, TD)
    assert plain.root_fingerprint == idle.signer.root_fingerprint
    assert plain.trust_bundle == adding.authority.trust_bundle

    overlap = reloaded.promote(NOW + 5)
    store.save(overlap)
    reloaded = RootStore(folder, TD).load_or_create()
    assert reloaded == overlap and reloaded.finish_after == NOW + 5 + 3600
    assert reloaded.server_authority.root_fingerprint == idle.signer.root_fingerprint
    assert CertificateAuthority.load(folder, TD).root_fingerprint == \
        overlap.signer.root_fingerprint

    done = reloaded.finish(NOW + 4000)
    store.save(done)
    assert not (folder / STATE_FILE).exists()
    after = RootStore(folder, TD).load_or_create()
    assert after.phase == IDLE and after.signer.root_fingerprint == done.signer.root_fingerprint
    assert len(x509.load_pem_x509_certificates((folder / ROOT_CERT).read_bytes())) == 1
    # The old root's key is gone from the folder.
    assert idle.signer.key_pem() not in b"".join(p.read_bytes() for p in folder.iterdir())


def test_a_crash_between_the_writes_is_repaired_at_the_next_load(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    store = RootStore(folder, TD)
    idle = store.load_or_create()
    before = (folder / ROOT_CERT).read_bytes(), (folder / ROOT_KEY).read_bytes()
    overlap = idle.start(new_root(TD, NOW), NOW).promote(NOW)
    store.save(overlap)
    # As if the process died after the state file was written, before ca.crt and ca.key were.
    (folder / ROOT_CERT).write_bytes(before[0])
    (folder / ROOT_KEY).write_bytes(before[1])
    assert RootStore(folder, TD).load_or_create() == overlap
    assert (folder / ROOT_CERT).read_bytes() == overlap.authority.trust_bundle
    assert (folder / ROOT_KEY).read_bytes() == overlap.signer.key_pem()


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read"),
    ('{"format": 7}', "not a meshpilot root rotation"),
    ('{"format": 1, "phase": "overlap"}', "missing or malformed"),
    ('{"format": 1, "phase": "sideways", "signer": {}, "other": {}}', "does not load"),
])
def test_a_damaged_state_file_refuses_to_start_with_its_path(tmp_path: Path, content: str,
                                                             message: str) -> None:
    folder = tmp_path / "ca"
    RootStore(folder, TD).load_or_create()
    (folder / STATE_FILE).write_text(content)
    with pytest.raises(CaError, match=message) as raised:
        RootStore(folder, TD).load_or_create()
    assert STATE_FILE in str(raised.value)


def test_a_state_file_whose_key_is_not_its_root_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    store = RootStore(folder, TD)
    state = store.load_or_create().start(new_root(TD, NOW), NOW)
    store.save(state)
    data = json.loads((folder / STATE_FILE).read_text())
    data["other"]["key"] = data["signer"]["key"]
    (folder / STATE_FILE).write_text(json.dumps(data))
    with pytest.raises(CaError, match="whose key is not its certificate's"):
        RootStore(folder, TD).load_or_create()


# ---- workload identities ----------------------------------------------------------------------


def test_identities_reissue_what_another_root_signed(old) -> None:
    clock = [NOW]
    identities = WorkloadIdentities(old, ttl=3600, clock=lambda: clock[0])
    first = {n: identities.certificate(n) for n in ("a", "b", "c")}
    assert identities.by_root() == {old.root_fingerprint: 3}
    _, adding, overlap, done = _rotated(old)
    identities.set_authority(adding.authority)
    assert identities.stragglers() == frozenset()  # A still signs
    assert identities.trust_bundle == adding.authority.trust_bundle
    identities.set_authority(overlap.authority)
    assert identities.stragglers() == {"a", "b", "c"}
    clock[0] += 1
    assert identities.reissue({"a", "unknown"}) == {"a"}  # only names that have one
    assert identities.certificate("a").root == overlap.signer.root_fingerprint
    assert identities.certificate("a").serial != first["a"].serial
    assert identities.certificate("b") == first["b"]  # left to its renewal
    assert identities.stragglers() == {"b", "c"}
    assert identities.by_root() == {overlap.signer.root_fingerprint: 1, old.root_fingerprint: 2}
    # A renewal is issued by the new root.
    clock[0] += 1801
    identities.renew_due()
    assert identities.stragglers() == frozenset()
    identities.set_authority(done.authority)
    with pytest.raises(ValueError, match="trust domain"):
        identities.set_authority(CertificateAuthority.create("other.org"))

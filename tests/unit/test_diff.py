"""`meshpilot diff`: golden outputs (tests/diff/<case>/{before,after}/ -> expected.txt), exit
statuses (1: a difference, 0: none, 2: an error), secrets as fingerprints, git revisions.

Regenerate the expected outputs with MESHPILOT_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meshpilot.cli import main
from meshpilot.local.diff import discovered_endpoints

CASES_DIR = Path(__file__).parents[1] / "diff"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "before").is_dir())
UPDATE = os.environ.get("MESHPILOT_UPDATE_GOLDEN") == "1"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diff", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES_DIR / case)
    code, out, err = run(capsys, "after", "--against", "before")
    expected = CASES_DIR / case / "expected.txt"
    if UPDATE:
        expected.write_text(out)
    assert err == ""
    assert out == expected.read_text(), f"{case}: regenerate with MESHPILOT_UPDATE_GOLDEN=1"
    assert code == (0 if out.startswith("view") and "no change (against" in out else 1)
    # Every secret value is a fingerprint; a key never leaves.
    assert "PRIVATE KEY" not in out


def test_no_difference_exits_0_and_a_difference_1(capsys: pytest.CaptureFixture[str]) -> None:
    same = CASES_DIR / "same"
    assert run(capsys, str(same / "after"), "--against", str(same / "before"))[0] == 0
    edit = CASES_DIR / "edit"
    assert run(capsys, str(edit / "after"), "--against", str(edit / "before"))[0] == 1
    # And the other way round: what was added is removed.
    code, out, _ = run(capsys, str(edit / "before"), "--against", str(edit / "after"))
    assert code == 1
    assert "- clusters api" in out and "+ clusters old-api" in out


def test_errors_exit_2_with_the_problem(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "p.yaml").write_text("kind: Service\nname: web\nendpoints: [not an address]\n")
    code, out, err = run(capsys, str(broken), "--against", str(CASES_DIR / "same" / "before"))
    assert (code, out) == (2, "")
    assert "p.yaml:3:" in err
    code, _, err = run(capsys, str(CASES_DIR / "same" / "after"), "--against",
                       str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in err
    # A server that does not answer.
    code, _, err = run(capsys, str(CASES_DIR / "same" / "after"), "--server", "127.0.0.1:1",
                       "--token-file", str(_token(tmp_path)))
    assert code == 2 and "cannot reach" in err


def _token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("not-a-real-token\n")
    return path


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                   cwd=cwd, check=True, capture_output=True)


def test_against_a_git_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    policy = repo / "deploy" / "policy"
    shutil.copytree(CASES_DIR / "edit" / "before", policy)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "before")
    assert run(capsys, str(policy), "--against-git", "HEAD")[0] == 0
    shutil.copy(CASES_DIR / "edit" / "after" / "policy.yaml", policy / "policy.yaml")
    code, out, _ = run(capsys, str(policy), "--against-git", "HEAD")
    assert code == 1
    _, folder_out, _ = run(capsys, str(CASES_DIR / "edit" / "after"), "--against",
                           str(CASES_DIR / "edit" / "before"))
    # The same changes as between the two folders; only the last line (against what) differs.
    assert out.splitlines()[:-1] == folder_out.splitlines()[:-1]
    assert out.splitlines()[-1] == "1 view(s) would change (against git revision HEAD)"
    # The work tree is untouched, and a revision that does not exist is an error.
    assert (policy / "policy.yaml").read_text() == (
        CASES_DIR / "edit" / "after" / "policy.yaml").read_text()
    code, _, err = run(capsys, str(policy), "--against-git", "no-such-rev")
    assert code == 2 and "no-such-rev" in err


def test_the_servers_discovered_endpoints_are_the_registrys() -> None:
    found = discovered_endpoints([
        {"id": "b", "service": "web", "address": "10.0.0.2:80", "labels": {"v": "2"},
         "source": "registration"},
        {"id": "a", "service": "web", "address": "[fd00::1]:80", "labels": {},
         "source": "docker"},
        {"id": "c", "service": "web", "address": "10.0.0.2:80", "labels": {},
         "source": "docker"},  # the same address from another source: one endpoint, the
    ])                           # first source by name's (as the server's registry does)
    assert [(e.host, e.port, e.labels) for e in found["web"]] == [
        ("10.0.0.2", 80, ()), ("fd00::1", 80, ())]

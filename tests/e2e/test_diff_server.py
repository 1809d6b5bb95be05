"""`meshpilot diff DIR --server`: a folder against what a running `meshpilot serve` serves, as
an operator (the state folder's key), with the endpoints it discovered taken into account."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from meshpilot.cli import main

CASES_DIR = Path(__file__).parents[1] / "diff"


def diff(capsys, mp, folder: Path) -> tuple[int, str, str]:
    code = main(["diff", str(folder), "--server", f"127.0.0.1:{mp.admin_port}",
                 "--state-dir", str(mp.state_dir)])
    out = capsys.readouterr()
    return code, out.out, out.err


def register(mp, service: str, address: str) -> None:
    token = subprocess.run([sys.executable, "-m", "meshpilot", "token", "create",
                            "registration", service, "--state-dir", str(mp.state_dir)],
                           capture_output=True, text=True, check=True).stdout.strip()
    request = urllib.request.Request(
        f"{mp.admin}/v1/registrations", method="POST",
        data=json.dumps({"service": service, "address": address}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 201


def test_a_folder_against_the_running_server(tmp_path, capsys, meshpilot_factory) -> None:
    serving = tmp_path / "serving"
    shutil.copytree(CASES_DIR / "edit" / "before", serving)
    mp = meshpilot_factory(serving, extra_args=("--no-prepush-check",))

    # What it serves: no difference, exit 0.
    code, out, err = diff(capsys, mp, serving)
    assert (code, err) == (0, ""), err
    assert out == (f"view edge: no change\nno change (against the server at "
                   f"127.0.0.1:{mp.admin_port})\n")

    # The edit: the same changes as between the two folders, exit 1.
    code, out, _ = diff(capsys, mp, CASES_DIR / "edit" / "after")
    assert code == 1
    golden = (CASES_DIR / "edit" / "expected.txt").read_text().splitlines()
    assert out.splitlines()[:-1] == golden[:-1]

    # An instance the server discovered is part of what it serves, not a change of the folder.
    register(mp, "web", "10.1.2.3:8080")
    code, out, _ = diff(capsys, mp, serving)
    assert code == 0, out

    # Without a credential the server refuses: an error, exit 2.
    code = main(["diff", str(serving), "--server", f"127.0.0.1:{mp.admin_port}",
                 "--state-dir", str(tmp_path / "no-state")])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""

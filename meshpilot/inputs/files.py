"""Which files a policy is made of: every `*.yaml`/`*.yml` below a folder, or one file."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from meshpilot.base.errors import PolicyIssue, Position
from meshpilot.inputs.context import LoadContext

POLICY_SUFFIXES = (".yaml", ".yml")


def policy_folder(path: Path) -> Path:
    """The folder relative paths in the policy are resolved against (certificates, keys)."""
    return path if path.is_dir() else path.parent


def policy_files(root: Path, load: LoadContext) -> list[tuple[Path, str]]:
    """(path to read, name shown in positions) of every policy file, in sorted path order.

    A directory contributes every `*.yaml`/`*.yml` below it, except hidden files and folders
    (editors' lock and swap files start with a dot) and symlinked folders (not followed, so a
    link cannot loop). A single file is loaded whatever its name. Problems go into `load`.
    """
    try:
        is_directory = root.is_dir()
        exists = is_directory or root.exists()
    except OSError as error:
        load.issues.append(PolicyIssue(f"cannot read policy {root}: {error.strerror or error}"))
        return []
    if not exists:
        load.issues.append(PolicyIssue(f"policy path {root} does not exist"))
        return []
    if not is_directory:
        return [(root, str(root))]
    found: list[tuple[tuple[str, ...], Path]] = []

    def unreadable(error: OSError) -> None:
        where = _relative_name(Path(error.filename or root), root)
        load.issues.append(PolicyIssue(f"cannot read folder: {error.strerror or error}",
                                       Position(where, 1, 1)))

    for directory, folders, names in os.walk(root, onerror=unreadable):
        folders[:] = [folder for folder in folders if not _is_hidden(folder)]
        for name in names:
            if _is_policy_file_name(name):
                path = Path(directory, name)
                found.append((PurePosixPath(_relative_name(path, root)).parts, path))
    found.sort()
    return [(path, "/".join(parts)) for parts, path in found]


def policy_file_names(path: str | Path) -> list[str]:
    """The names `load_policy` would read (as shown in positions), for watchers and tools."""
    files = policy_files(Path(path), LoadContext())
    return [shown_name for _, shown_name in files]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_policy_file_name(name: str) -> bool:
    return (not _is_hidden(name) and name.lower().endswith(POLICY_SUFFIXES)
            and not name.endswith("~"))


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()

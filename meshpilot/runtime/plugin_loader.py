"""Finding and loading plugins: the entry points of group `meshpilot.plugins`.

Loading imports third-party code, so it belongs to the process (app.py, the `meshpilot` command),
not to the translators: they only call `Plugin`s they are given (meshpilot.translators.plugins).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

from meshpilot.translators.plugins import Plugin, PluginError

GROUP = "meshpilot.plugins"  # public: plugin packages declare their entry points in it


def installed() -> dict[str, EntryPoint]:
    """Every plugin entry point installed, by name (the first one found wins a name)."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def load_plugins(names: Iterable[str] | None = None) -> list[Plugin]:
    """Load the plugins named (entry point names, in that order), or every installed one (by name)
    for None. PluginError if one is not installed or cannot be imported."""
    available = installed()
    wanted = sorted(available) if names is None else list(dict.fromkeys(names))
    return [_load(name, available) for name in wanted]


def _load(name: str, available: Mapping[str, EntryPoint]) -> Plugin:
    entry_point = available.get(name)
    if entry_point is None:
        have = ", ".join(sorted(available)) or "none"
        raise PluginError(name, f"no entry point {name!r} in group {GROUP} (installed: {have})")
    try:
        target = entry_point.load()
    except Exception as e:
        raise PluginError(name, f"cannot load {entry_point.value}: {type(e).__name__}: {e}") from e
    return Plugin(target, name)

"""Loading a policy folder (or one file) into a `Model`, all of it or none of it.

The cold load, in four steps, each in a module of its own:

1. `files.py`: which files (every `*.yaml`/`*.yml` below the folder, in sorted path order);
2. `yamlsource.py`: each file's YAML documents, with the position of every field;
3. `documents.py`: each document's `(apiVersion, kind)` picks its format's parser
   (`formats.py`; meshpilot's own kinds are `native/`), which returns model parts and reports
   issues with positions;
4. `assembly.py`: the checks across documents (`references.py`), then the `Model`, or one
   `PolicyError` listing every issue of every file.

It never raises anything but `PolicyError` for bad input, and `load_policy` holds no state
between loads. `PolicyLoader` (what the controller keeps) is the same load made cheaper for a
process that loads the same folder again and again: it first tries to reuse what unchanged
files gave last time (`incremental.py`, an optimisation) and falls back to the cold load.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from meshpilot.base import tlsfiles as tls
from meshpilot.base.gcpause import collection_paused
from meshpilot.inputs.assembly import finish
from meshpilot.inputs.context import LoadContext, ParsedDocument
from meshpilot.inputs.documents import load_documents
from meshpilot.inputs.files import policy_files, policy_folder
from meshpilot.inputs.incremental import ParseCache
from meshpilot.inputs.yamlsource import parse_yaml, read_yaml_file
from meshpilot.ir.changes import ModelChanges
from meshpilot.ir.model import Model


def load_policy(path: str | Path, allowed_files: Iterable[Path] = ()) -> Model:
    """Load a policy folder (every `*.yaml`/`*.yml` below it) or a single file.

    Files the policy names (certificates, keys, API keys, JWKS, htpasswd) must lie inside the
    policy folder or one of `allowed_files` (folders); anything else is an issue at the field.
    Raises `PolicyError` listing every issue, sorted by file, line and column, if anything is
    wrong anywhere; otherwise returns the whole model.
    """
    root = Path(path)
    load = LoadContext()
    parsed: list[ParsedDocument] = []
    with collection_paused(), \
            tls.paths_relative_to(policy_folder(root), allowed_files):
        files = policy_files(root, load)
        for file_path, shown_name in files:
            documents, issues = read_yaml_file(file_path, shown_name)
            load.issues.extend(issues)
            load_documents(documents, load, parsed)
        return finish(load, parsed, tuple(shown_name for _, shown_name in files))


def load_policy_text(text: str | bytes, file: str = "policy.yaml") -> Model:
    """Load policy given as text, as if it were the file `file` (for tools and tests)."""
    load = LoadContext()
    parsed: list[ParsedDocument] = []
    with collection_paused():
        documents, issues = parse_yaml(text, file)
        load.issues.extend(issues)
        load_documents(documents, load, parsed)
        return finish(load, parsed, (file,))


class PolicyLoader:
    """`load_policy(path)` for a process that loads the same folder again and again.

    Each load first tries the parses kept from the previous loads (`ParseCache`: only changed
    files, and changed documents inside them, are parsed again); if anything is wrong anywhere,
    the folder is loaded once more by `load_policy` itself, so a rejected load reports exactly
    what a cold one reports.

    `tls_files` is the set of TLS files (absolute) the newest attempt depended on, successful or
    not. Not thread-safe: one load at a time (the controller never overlaps reloads).
    """

    def __init__(self, path: str | Path, allowed_files: Iterable[Path] = ()):
        self.path = Path(path)
        self.allowed_files = tuple(allowed_files)
        self.tls_files: frozenset[str] = frozenset()
        self._cache = ParseCache(self.path)

    @property
    def parsed_files(self) -> int:
        """Files parsed by the newest load (for tests and metrics)."""
        return self._cache.parsed_files

    @property
    def changes(self) -> ModelChanges | None:
        """What the newest load changed from the one before, if it followed the index of who
        refers to whom (`dependents.py`); None after a load that went the whole way."""
        return self._cache.changes

    @property
    def fast(self) -> bool:
        """Whether the newest load followed the index (checked only what its edit touched)."""
        return self._cache.fast

    @property
    def format_edit(self) -> bool:
        """Whether the newest load compiled an edit of only Gateway API documents without
        the checks across documents (which read none of them), `incremental.py`."""
        return self._cache.format_edit

    @property
    def parsed_pieces(self) -> int:
        """Pieces of those files parsed (a file parsed whole counts 1)."""
        return self._cache.parsed_pieces

    def load(self) -> Model:
        with collection_paused(), \
                tls.paths_relative_to(policy_folder(self.path), self.allowed_files):
            model = self._cache.try_load()
            if model is not None:
                self.tls_files = self._cache.tls_files
                return model
            self._cache.forget()
            with tls.recording() as files:
                try:
                    return load_policy(self.path, self.allowed_files)
                finally:
                    self.tls_files = frozenset(files)

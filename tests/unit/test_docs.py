"""docs/policy.md stays true: it names every field of the language, and its examples load.

- Every property name of the JSON Schema (`meshpilot schema`), at any depth, appears in the doc
  in backticks, so a field added to the language without documentation fails here.
- Every ```yaml block with a `kind:` line loads on its own with `load_policy_text`, except blocks
  right after a line containing `<!-- invalid example -->`: those must fail to load, and when
  the next block is a ```text block, it lists exactly the problems reported. Blocks without
  `kind:` are fragments and are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.inputs.native.schema import json_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
INVALID_MARKER = "<!-- invalid example -->"
FENCE = re.compile(r"^```(\S*)\s*$")
KIND_LINE = re.compile(r"^\s*kind:", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    text: str
    invalid: bool  # preceded by the invalid-example marker


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of `text`, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        assert end < len(lines), f"docs/policy.md:{index + 1}: unclosed code block"
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        blocks.append(Block(language=opening.group(1), line=index + 1,
                            text="\n".join(lines[index + 1:end]) + "\n",
                            invalid=INVALID_MARKER in before))
        index = end + 1
    return blocks


BLOCKS = fenced_blocks(doc_text())
DOCUMENT_BLOCKS = [(position, block) for position, block in enumerate(BLOCKS)
                   if block.language == "yaml" and KIND_LINE.search(block.text)]


def property_names(schema: Any) -> set[str]:
    """Every key of every `properties` mapping in `schema`, at any depth ($defs included)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        properties = schema.get("properties")
        if isinstance(properties, dict):
            found.update(properties)
        for value in schema.values():
            found |= property_names(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= property_names(item)
    return found


def test_the_schema_walk_finds_nested_properties() -> None:
    names = property_names(json_schema())
    assert {"kind", "per_try_timeout", "substitution", "present", "remove", "views"} <= names


def test_every_schema_property_is_documented() -> None:
    text = doc_text()
    missing = sorted(name for name in property_names(json_schema())
                     if f"`{name}`" not in text)
    assert not missing, f"docs/policy.md does not mention: {', '.join(missing)}"


def test_the_doc_has_examples_of_every_kind() -> None:
    kinds = {match for _, block in DOCUMENT_BLOCKS
             for match in re.findall(r"^kind: (\w+)", block.text, re.MULTILINE)}
    assert kinds >= {"Service", "Gateway", "Route", "EnvoyResources", "Rollout"}


@pytest.mark.parametrize(("position", "block"), DOCUMENT_BLOCKS,
                         ids=[f"line-{block.line}" for _, block in DOCUMENT_BLOCKS])
def test_yaml_examples_load(position: int, block: Block) -> None:
    if not block.invalid:
        try:
            load_policy_text(block.text)
        except PolicyError as error:
            problems = "\n".join(str(issue) for issue in error.issues)
            pytest.fail(f"docs/policy.md:{block.line}: the example does not load:\n{problems}")
        return
    with pytest.raises(PolicyError) as raised:
        load_policy_text(block.text)
    shown = BLOCKS[position + 1] if position + 1 < len(BLOCKS) else None
    if shown is not None and shown.language == "text":
        expected = [line for line in shown.text.splitlines() if line.strip()]
        assert [str(issue) for issue in raised.value.issues] == expected, \
            f"docs/policy.md:{shown.line}: the errors shown differ from the errors reported"

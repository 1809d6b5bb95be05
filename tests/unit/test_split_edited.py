"""`yamlsource.split_edited`: an edited file's pieces told from its last split are exactly the
pieces `split_documents` cuts the new text into, for edits at the start, middle and end,
that add or remove lines and documents, and None where the new text cannot be cut."""

from __future__ import annotations

import random

import pytest

from meshpilot.inputs.yamlsource import split_documents, split_edited


def _documents(count: int) -> list[str]:
    return [f"kind: Service\nname: s{i}\nendpoints: [{{address: '127.0.0.{i % 250}:80'}}]\n"
            for i in range(count)]


def _joined(documents: list[str]) -> str:
    return "---\n".join(documents)


def _check(before: str, after: str) -> tuple[int, int]:
    pieces = split_documents(before.encode())
    assert pieces is not None
    expected = split_documents(after.encode())
    told = split_edited(after.encode(), before, pieces)
    assert told is not None
    text, head, middle, tail = told
    assert text == after
    assert [*pieces[:head], *middle, *pieces[len(pieces) - tail:]] == expected
    return head, tail


def test_split_edited_equals_a_whole_split() -> None:
    documents = _documents(40)
    before = _joined(documents)
    edits = {
        "first": lambda d: d.__setitem__(0, d[0].replace("s0", "s0-edited")),
        "middle, same lines": lambda d: d.__setitem__(20, d[20].replace("127", "128")),
        "middle, a line more": lambda d: d.__setitem__(20, d[20] + "labels: {a: b}\n"),
        "last": lambda d: d.__setitem__(-1, d[-1].replace("80", "81")),
        "one document more": lambda d: d.insert(7, "kind: Service\nname: new\n"),
        "one document less": lambda d: d.pop(7),
        "two documents merged": lambda d: d.__setitem__(5, d.pop(5) + d[5]),
        "appended": lambda d: d.append("kind: Service\nname: tail\n"),
    }
    for what, edit in edits.items():
        changed = list(documents)
        edit(changed)
        head, tail = _check(before, _joined(changed))
        if what == "middle, same lines":
            assert (head, tail) == (20, 19), what  # only the edited piece is cut again
    rng = random.Random(7)
    for _ in range(200):
        changed = list(documents)
        at = rng.randrange(len(changed))
        choice = rng.randrange(3)
        if choice == 0:
            changed[at] = changed[at].replace("Service", "Svc", 1)
        elif choice == 1:
            changed.insert(at, "kind: Route\nname: r\n")
        else:
            changed.pop(at)
        _check(before, _joined(changed))


@pytest.mark.parametrize("inserted", ["%YAML 1.2\n", "...\n", "a: b\r\n"])
def test_split_edited_refuses_what_cannot_be_cut(inserted: str) -> None:
    documents = _documents(5)
    before = _joined(documents)
    pieces = split_documents(before.encode())
    assert pieces is not None
    documents[2] = inserted + documents[2]
    after = _joined(documents)
    assert split_documents(after.encode()) is None
    assert split_edited(after.encode(), before, pieces) is None


def test_split_edited_after_character_edits() -> None:
    """Edits of a few characters anywhere (markers, line breaks and blanks among them) give
    the whole split's pieces, or None only where the whole split is None too."""
    before = _joined(_documents(12))
    pieces = split_documents(before.encode())
    assert pieces is not None
    rng = random.Random(11)
    alphabet = ["-", "\n", " ", "a", "---\n", "\n---", "\n--- ", "x\n", "."]
    told_some = 0
    for _ in range(600):
        at = rng.randrange(len(before) + 1)
        cut = rng.randrange(4)
        after = before[:at] + "".join(rng.choice(alphabet) for _ in range(rng.randrange(3))) + \
            before[at + cut:]
        expected = split_documents(after.encode())
        told = split_edited(after.encode(), before, pieces)
        if told is None:
            assert expected is None, after
            continue
        told_some += 1
        text, head, middle, tail = told
        assert text == after
        assert [*pieces[:head], *middle, *pieces[len(pieces) - tail:]] == expected, after
    assert told_some > 400


def test_split_edited_of_non_ascii_text() -> None:
    """A text that is not ASCII (its bytes and characters at other offsets) is compared as
    text, and still cut only where it changed."""
    documents = [doc.replace("name: s", "name: é") for doc in _documents(20)]
    before = _joined(documents)
    documents[10] = documents[10].replace("127", "128")
    head, tail = _check(before, _joined(documents))
    assert (head, tail) == (10, 9)
    documents[0] = documents[0].replace("é0", "e0")  # ASCII now before, not after
    _check(before, _joined(documents))

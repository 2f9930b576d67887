"""The type checker's ignores (``python -m mypy``, settings in pyproject.toml).

Every ``# type: ignore`` in the package names its error codes and says why
on the same line, after the ignore: ``# type: ignore[code]  # reason``.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "popstats"
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]+\])?(?P<rest>.*)$")


def unexplained_ignores(source: str) -> list[int]:
    """The line numbers of ignores without codes or without a reason."""
    lines = []
    for number, line in enumerate(source.splitlines(), 1):
        found = IGNORE.search(line)
        if found and (not found["codes"] or not re.match(r"\s+#\s*\S", found["rest"])):
            lines.append(number)
    return lines


def test_the_check_finds_unexplained_ignores() -> None:
    source = (
        "a = 1  # type: ignore\n"
        "b = 2  # type: ignore[misc]\n"
        "c = 3  # type: ignore[misc]  # PyTensor types it too narrowly\n"
        "d = 4\n"
    )
    assert unexplained_ignores(source) == [1, 2]


def test_every_type_ignore_names_its_codes_and_reason() -> None:
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number in unexplained_ignores(path.read_text())
    ]
    assert not bad, f"type: ignore without [codes] and '# reason' after it: {bad}"

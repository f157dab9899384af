"""Regenerate the bad-input table of docs/reliability.md from the tests that check each row.

python docs/make_reliability_table.py           # rewrite the table in docs/reliability.md
python docs/make_reliability_table.py --check   # exit 1 if the committed table is out of date

A row is a test function of ``TEST_FILES`` whose docstring is one line
``"<bad input> -> <what it gets now>"``, or an entry ``(id, bad input, outcome)`` of a module-level
``CASES`` list (its test: the function parametrized over ``CASES``). The files are read with
``ast``: nothing is imported or run. A file that does not exist is skipped.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ("tests/unit/test_untrusted.py", "tests/unit/test_numbers.py")
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"
ARROW = " -> "


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _cases(tree: ast.Module) -> list[tuple[str, str, str]]:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "CASES" for t in targets):
            return [tuple(case) for case in ast.literal_eval(node.value)]
    return []


def _uses_cases(fn: ast.FunctionDef) -> bool:
    return any("CASES" in ast.unparse(d) for d in fn.decorator_list)


def rows(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(bad input, what it gets, test) for every row of every test file present."""
    found = []
    for name in TEST_FILES:
        path = root / name
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        for fn in functions:
            if not fn.name.startswith("test_"):
                continue
            doc = ast.get_docstring(fn) or ""
            if ARROW in doc and "\n" not in doc.strip():
                bad, outcome = doc.strip().split(ARROW, 1)
                found.append((bad, outcome, f"`{name}::{fn.name}`"))
            if _uses_cases(fn):
                for case_id, bad, outcome in _cases(tree):
                    found.append((bad, outcome, f"`{name}::{fn.name}[{case_id}]`"))
    return found


def table(root: Path = ROOT) -> str:
    lines = ["| bad input | what it gets | test |", "|---|---|---|"]
    lines += [f"| {_cell(b)} | {_cell(o)} | {t} |" for b, o, t in rows(root)]
    return "\n".join(lines)


def rewrite(text: str, new_table: str) -> str:
    """``text`` with the part between the markers replaced by ``new_table``."""
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} lacks the markers {START} and {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{new_table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if out of date")
    a = p.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    wanted = rewrite(text, table())
    if a.check:
        if wanted != text:
            print(f"{DOC} is out of date: run python docs/make_reliability_table.py")
            return 1
        return 0
    DOC.write_text(wanted, encoding="utf-8")
    print(f"wrote {len(rows())} rows to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

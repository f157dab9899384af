"""docs/reliability.md's bad-input table is generated from the tests' docstrings: it cannot drift."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def script():
    spec = importlib.util.spec_from_file_location("table", ROOT / "docs/make_reliability_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_table_is_the_generated_one():
    table = script()
    text = (ROOT / "docs/reliability.md").read_text()
    assert table.rewrite(text, table.table()) == text, "run python docs/make_reliability_table.py"
    assert len(table.rows()) >= 20  # the issue-25 tests of test_untrusted.py at least


def test_rows_come_from_docstrings_and_cases_of_the_files_present(tmp_path):
    table = script()
    (tmp_path / "tests/unit").mkdir(parents=True)
    (tmp_path / "tests/unit/test_untrusted.py").write_text(
        'CASES = [("a", "bad | a", "refused")]\n'
        "def test_one():\n"
        '    """x -> y"""\n'
        "def test_two():\n"
        '    """a docstring without the arrow"""\n'
        '@pytest.mark.parametrize("case", [c[0] for c in CASES])\n'
        "def test_cases(case):\n"
        "    pass\n"
    )
    untrusted = "tests/unit/test_untrusted.py"
    expected = [
        ("x", "y", f"`{untrusted}::test_one`"),
        ("bad | a", "refused", f"`{untrusted}::test_cases[a]`"),
    ]
    assert table.rows(tmp_path) == expected  # no test_numbers.py: skipped
    (tmp_path / "tests/unit/test_numbers.py").write_text('def test_n():\n    """NaN -> stops"""\n')
    assert table.rows(tmp_path)[-1] == ("NaN", "stops", "`tests/unit/test_numbers.py::test_n`")
    assert "| bad \\| a | refused |" in table.table(tmp_path)

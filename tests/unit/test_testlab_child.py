"""vpn.testlab.child: a function of an importable module run in a child process, its result as JSON."""

from __future__ import annotations

import subprocess

import pytest

from vpn.testlab import child


def test_a_child_imports_the_module_by_name_and_prints_the_result() -> None:
    proc = subprocess.run(child.argv("textwrap", "shorten", text="one two three", width=9), capture_output=True,
                          text=True, timeout=30, check=True)
    assert child.result(proc.stdout) == "one [...]"


def test_result_takes_the_last_result_line_and_fails_without_one() -> None:
    assert child.result('noise\nRESULT {"a": 1}\nRESULT [2]\n') == [2]
    with pytest.raises(AssertionError, match="no result"):
        child.result("Traceback: it broke\n")


def test_main_calls_with_keyword_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert child.main(["json", "dumps", '{"obj": [1, 2], "separators": [",", ":"]}']) == 0
    assert capsys.readouterr().out == 'RESULT "[1,2]"\n'

"""`python -m analysis.report` refuses a folder it cannot report on in one line, writing nothing."""

from __future__ import annotations

import subprocess
import sys


def report(*args):
    return subprocess.run([sys.executable, "-m", "analysis.report", *map(str, args)], capture_output=True, text=True)


def test_a_missing_folder_is_one_line_and_a_nonzero_exit(tmp_path):
    done = report(tmp_path / "no_such_run", "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no results folder" in done.stderr and "experiment folder" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_empty_folder_is_one_line_and_a_nonzero_exit(tmp_path):
    (tmp_path / "run" / "results").mkdir(parents=True)
    done = report(tmp_path / "run", "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no part files" in done.stderr
    assert not (tmp_path / "out").exists()

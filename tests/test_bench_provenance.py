"""The first line of a benchmark's results file: its commit, and whether the code differed from it."""

import importlib.util
import subprocess
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
spec = importlib.util.spec_from_file_location("bench_common", BENCHMARKS / "common.py")
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)


def test_provenance_marks_changed_code_but_not_rewritten_results(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "benchmarks" / "results" / "train.txt").write_text("old figures\n")
    (tmp_path / "src" / "model.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    commit = git("rev-parse", "--short", "HEAD")

    # make bench's first script rewrote a results file: the next one still runs the committed code.
    (tmp_path / "benchmarks" / "results" / "train.txt").write_text("new figures\n")
    assert f"commit {commit}: python " in common.provenance(tmp_path)

    (tmp_path / "src" / "model.py").write_text("x = 2\n")
    assert f"commit {commit}+changes: python " in common.provenance(tmp_path)

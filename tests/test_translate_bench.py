"""The benchmarks run as their docstrings say (``python bench/<name>.py`` puts ``bench/`` first on sys.path)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted((ROOT / "bench").glob("*.py"))


def test_no_bench_file_shadows_a_module():
    """A bench named like a package (``bench/hub.py``) hides it from every other bench in the folder."""
    assert BENCHES
    for path in BENCHES:
        assert importlib.util.find_spec(path.stem) is None, f"bench/{path.name} shadows module {path.stem!r}"


def test_every_bench_docstring_names_its_own_command():
    for path in BENCHES:
        doc = path.read_text().split('"""')[1]
        assert f"bench/{path.name}" in doc, f"bench/{path.name}: docstring gives no usage line"


def test_translate_bench_runs_as_documented():
    out = subprocess.run([sys.executable, "bench/translate.py", "--events", "tests/samples", "--seconds", "0.2",
                          "--users", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    last = dict(line.split("=", 1) for line in out.stdout.splitlines()[-2:])
    assert set(last) == {"xapi_events_per_s", "caliper_events_per_s"}
    assert all(int(v) > 0 for v in last.values()), out.stdout

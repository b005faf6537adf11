"""bench/run.py: a header and readable rows; a user's run writes to bench/results/local/, --publish to
bench/results/ (the published numbers the README links to)."""
from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(BENCH)
    for name in [m for m in sys.modules if m == "common" or m.startswith("sections")]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location("fastmde_bench_run", os.path.join(BENCH, "run.py"))
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    # one fake section (the real ones time things): two rows that fill different columns
    section = types.ModuleType("sections.kernels")

    def measure(ctx, device):
        ctx.add(section="kernels", what="depth loss", shape="2x1x9x11", dtype="float32", layout="NCHW",
                impl="native", total_ms=1.25, vs_eager=3.5)
        ctx.add(section="kernels", what="metrics", shape="2x1x9x11", dtype="bfloat16", layout="channels_last",
                impl="eager", total_ms=4.0, note="a note")

    section.run, section.NOTE = measure, None
    monkeypatch.setitem(sys.modules, "sections.kernels", section)
    monkeypatch.setattr(run, "available_sections", lambda: ["kernels"])
    monkeypatch.setattr(run, "PUBLISHED", str(tmp_path / "results"))
    monkeypatch.setattr(run, "LOCAL", str(tmp_path / "results" / "local"))
    return run


def test_rows_are_printed_under_a_header(bench, capsys):
    assert bench.main(["--only", "kernels", "--device", "cpu", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "  depth loss | 2x1x9x11 | float32 | NCHW | cpu | native | fwd+bwd ms 1.25 | x eager 3.50" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("what "))
    assert lines[header].split() == ["what", "shape", "dtype", "layout", "device", "impl", "fwd+bwd", "ms", "x",
                                     "eager", "note"]
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    row = lines[header + 3]                               # the second row, aligned under the header
    assert row.startswith("metrics") and row.index("bfloat16") == lines[header].index("dtype")
    assert row.index("channels_last") == lines[header].index("layout") and " - " in row   # its empty x eager


def test_a_run_writes_locally_unless_published(bench, tmp_path, capsys):
    assert bench.main(["--only", "kernels", "--device", "cpu"]) == 0
    local = sorted(os.listdir(tmp_path / "results" / "local"))
    assert len(local) == 2 and local[0].endswith("-quick.json") and local[1].endswith("-quick.md")
    assert os.listdir(tmp_path / "results") == ["local"]          # the published files untouched
    assert "--publish replaces the published ones" in capsys.readouterr().out
    assert bench.main(["--only", "kernels", "--device", "cpu", "--publish"]) == 0
    assert sorted(os.listdir(tmp_path / "results")) == sorted(["local", *local])
    md = (tmp_path / "results" / local[1]).read_text()
    assert "| what | shape | dtype | layout | device | impl |" in md
    with pytest.raises(SystemExit):
        bench.main(["--only", "kernels", "--publish", "--out-dir", str(tmp_path / "x")])
    assert "leave out --out-dir" in capsys.readouterr().err


def test_gitignore_keeps_local_results_out_of_git():
    root = os.path.dirname(BENCH)
    assert "bench/results/local/" in open(os.path.join(root, ".gitignore")).read().split()

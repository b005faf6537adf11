"""The paper's figures (fastmde/engine/paper.py): transcription checks and the sweep's tables."""
from __future__ import annotations

import pytest

from fastmde.engine import paper
from fastmde.engine.sweep import BUILTIN, builtin_rows
from fastmde.models import variants


def test_table4_speedups_are_its_per_second_over_the_baseline():
    # The paper prints both columns; each speed-up is its it/s over Hu et al.'s 0.19 it/s,
    # rounded to two significant figures: a check on the transcription of both.
    baseline = paper.table4_it_per_s(paper.TABLE4_BASELINE)
    assert baseline == 0.19
    for label, _, _, its, speedup in paper.TABLE4:
        ratio = its / baseline
        digits = 1 if ratio < 10 else 0
        assert round(ratio, digits) == pytest.approx(speedup), label


def test_rows_the_paper_repeats_agree():
    # Table 1's 384x288 run is Table 3's "Hu et al." run (same model, size and loss), and
    # Table 3's blurred run is Table 5's U-Net with the 1x1 and 3x3 kernels.
    assert paper.TABLE1[(288, 384)][1] == paper.TABLE3["hu"][1]
    assert paper.TABLE3["hu_blurred"][1] == paper.TABLE5["unet34-k3-1x1"][1]


def test_every_named_variant_exists():
    known = variants()
    named = {row[1] for row in paper.TABLE4} | set(paper.TABLE5) | {paper.TABLE2_MODEL,
                                                                   paper.TABLE1_SETTING["model"]}
    assert named <= set(known), named - set(known)


def test_table2_is_relative_to_the_full_size_row():
    speedups = [s for _, s in paper.TABLE2.values()]
    assert paper.TABLE2[(480, 640)][1] == 1.0
    assert speedups == sorted(speedups)


def _results(rows, metrics_value=0.5, **config):
    results = []
    for row in rows:
        cfg = {"model": row.get("model", "unet34-k3-1x1"), "size": [288, 384], "loss": row.get("loss", "hu"),
               "epochs": 3, "batch_size": 1}
        if "size" in row:
            cfg["size"] = [int(v) for v in row["size"].split("x")]
        cfg.update(config)
        results.append({"name": row["name"], "config": cfg, "it_per_s": 2.0,
                        "metrics": {k: metrics_value for k in paper.METRICS}})
    return results


def _lines(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|") and not line.startswith("|---")][1:]


@pytest.mark.parametrize("table", BUILTIN)
def test_sweep_tables_put_the_papers_row_under_the_runs(table):
    rows = builtin_rows(table)
    text = paper.beside_sweep(rows, _results(rows))
    lines = _lines(text)
    assert [line[0] for line in lines if line[1] == "this run"] == [r["name"] for r in rows]
    for i, line in enumerate(lines):
        if line[1] != "this run":
            continue
        under = lines[i + 1]
        assert under[0] == "" and under[1].startswith("paper: ")
    if table == "table1":
        # 288x384's paper row carries Table 1's numbers.
        i = next(i for i, line in enumerate(lines) if line[0] == "size 288x384")
        assert lines[i + 1][2:8] == [f"{v:.3f}" for v in paper.TABLE1[(288, 384)][1].values()]
    if table == "table3":
        i = next(i for i, line in enumerate(lines) if line[0] == "loss l1")
        assert lines[i + 1][1] == "paper: L1 loss"
        assert lines[i + 1][2] == "0.774"
    if table == "table4":
        # hu50 is in the run: Hu et al.'s 0.19 it/s under it; the paper's other eleven rows follow.
        i = next(i for i, line in enumerate(lines) if line[0] == "hu50")
        assert lines[i + 1][-1] == "0.19"
        assert sum(line[0] == "(not in this run)" for line in lines) == len(paper.TABLE4) - 1
    if table == "table5":
        # unet50-k5 has no paper row; unet34-k3 gets Table 5's metrics and Table 4's it/s.
        i = next(i for i, line in enumerate(lines) if line[0] == "unet50-k5")
        assert lines[i + 1][1] == "paper: no such row"
        i = next(i for i, line in enumerate(lines) if line[0] == "unet34-k3")
        assert lines[i + 1][2] == "0.830" and lines[i + 1][-1] == "10.20"


def test_sweep_table_names_the_differences_from_the_papers_setting():
    rows = builtin_rows("table1")
    same = paper.beside_sweep(rows, _results(rows))
    assert "Differences" not in same
    other = paper.beside_sweep(rows, _results(rows, loss="hu_blurred", epochs=1, batch_size=8))
    assert "loss hu_blurred (paper hu) in every row" in other
    assert "1 epoch(s) (paper 3)" in other and "batch size 8" in other


def test_other_sweeps_get_no_paper_table():
    rows = [{"name": "mine", "model": "unet34-k3"}]
    assert paper.beside_sweep(rows, _results(rows)) == ""
    assert paper.which_table(builtin_rows("table3")[:2]) is None

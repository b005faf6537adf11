"""The sweep protocol (table and figure) and DDP training with two gloo processes on CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from engine_helpers import TEST_FRAMES, cli_data_args, cli_model_args, synthetic_cache, tiny_config
from fastmde.cli import main
from fastmde.engine import read_checkpoint
from fastmde.engine.sweep import BUILTIN, builtin_rows, read_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory)


def test_sweep_writes_table_and_figure(cache, tmp_path, capsys):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"name": "l1 loss", "loss": "l1"}, {"name": "hu loss", "loss": "hu"}]))
    out = tmp_path / "sweep"
    argv = ["sweep", "--configs", str(rows), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.2",
            "--figure-images", "3", "--out", str(out), *cli_model_args(), *cli_data_args(cache)]
    assert main(argv) == 0
    table = (out / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    # cli_model_args trains --model unet34-k3-1x1 --encoder 18: the table names the ResNet18 network
    assert len(lines) == 3 and lines[1].startswith("| l1 loss | unet18-k3-1x1 | 32x48 | l1 |")
    assert lines[2].startswith("| hu loss |")
    assert "δ1" in lines[0] and "it/s" in lines[0] and "train time" in lines[0]
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results] == ["l1 loss", "hu loss"]
    for r in results:
        assert r["metrics"]["count"] == TEST_FRAMES and r["it_per_s"] > 0
        assert f"{r['metrics']['rms']:.3f}" in table
    figure = Image.open(out / "figure.png")
    from fastmde.engine.pictures import bar_layout

    bar = bar_layout(3 * 120)                             # the colour bar beside the three depth rows
    assert figure.size == (170 + 3 * 160 + bar["width"], 4 * 120)   # input, ground truth, two rows; 3 images
    assert bar["width"] > 40 and bar["min_height"] <= 3 * 120
    assert table in capsys.readouterr().out
    # Started again, finished rows are reused rather than retrained.
    mtime = os.path.getmtime(out / "l1-loss" / "last.pt")
    assert main(argv) == 0
    assert os.path.getmtime(out / "l1-loss" / "last.pt") == mtime


def test_sweep_with_ema_scores_the_average_in_table_and_figure(cache, tmp_path, monkeypatch):
    """One model per row, in the table and in the figure: with --ema the weights' average (what
    validation scores and `fastmde eval` loads), not the raw weights."""
    import torch

    from fastmde.engine import sweep
    from fastmde.engine.checkpoint import build_model_from_checkpoint
    from fastmde.engine.evaluate import evaluate
    from fastmde.engine.inference import predict_images

    drawn = {}
    monkeypatch.setattr(sweep, "make_figure", lambda images, gt, rows, path, **kw: drawn.update(rows))
    out = tmp_path / "ema"
    base = tiny_config(cache, str(out), ema=0.5, epochs=1, batch_size=4)
    result = sweep.run_sweep(base, [{"name": "avg"}], str(out), figure_images=2, log=lambda text: None)
    ckpt = read_checkpoint(str(out / "avg" / "last.pt"))
    average = build_model_from_checkpoint(ckpt)
    raw = build_model_from_checkpoint({**ckpt, "ema": None})
    from fastmde.engine.datasets import build_datasets

    _, _, test_set = build_datasets(base)
    # the sweep scores with its default protocol, fastmde
    # (1e-6: the CPU kernels' multithreaded sums may round the last bit differently run to run)
    scored = result["rows"][0]["metrics"]
    assert scored == pytest.approx(evaluate(average, test_set, "fastmde", batch_size=4), rel=1e-6)
    raw_rms = evaluate(raw, test_set, "fastmde", batch_size=4)["rms"]
    assert abs(scored["rms"] - raw_rms) > 1e-3 * raw_rms                # the test can tell them apart
    images = [test_set[i]["image"] for i in range(2)]
    for got, want, other in zip(drawn["avg"], predict_images(average, images), predict_images(raw, images)):
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(torch.from_numpy(got), torch.from_numpy(other), rtol=1e-3, atol=1e-3)


def test_sweep_reuses_a_row_only_with_the_same_options(cache, tmp_path):
    from fastmde.engine.sweep import run_sweep

    out = tmp_path / "reuse"
    base = tiny_config(cache, str(out), epochs=1, batch_size=4)
    logs = []
    run_sweep(base, [{"name": "a"}], str(out), figure_images=1, log=logs.append)
    mtime = os.path.getmtime(out / "a" / "last.pt")
    logs.clear()
    run_sweep(base.replace(progress=False, workers=0), [{"name": "a"}], str(out), figure_images=1, log=logs.append)
    assert os.path.getmtime(out / "a" / "last.pt") == mtime and any("reusing" in line for line in logs)
    logs.clear()
    run_sweep(base, [{"name": "a"}], str(out), protocol="hu", figure_images=1, log=logs.append)
    assert os.path.getmtime(out / "a" / "last.pt") == mtime                        # scored again only
    assert any("scoring under 'hu'" in line for line in logs)
    assert json.loads((out / "a" / "result.json").read_text())["protocol"] == "hu"
    logs.clear()
    # Other options: refused (naming them) unless --overwrite, which trains the row again.
    with pytest.raises(FileExistsError, match=r"--lr 0.001 \(saved\) -> 0.0005 \(now\)"):
        run_sweep(base, [{"name": "a", "lr": 5e-4}], str(out), protocol="hu", figure_images=1, log=logs.append)
    assert os.path.getmtime(out / "a" / "last.pt") == mtime
    run_sweep(base, [{"name": "a", "lr": 5e-4}], str(out), protocol="hu", figure_images=1, log=logs.append,
              overwrite=True)
    assert any("--lr 0.001 (saved) -> 0.0005 (now)" in line and "training again" in line for line in logs)
    assert json.loads((out / "a" / "result.json").read_text())["config"]["lr"] == 5e-4


def test_sweep_checks_every_row_before_training(cache, tmp_path):
    from fastmde.engine.sweep import run_sweep

    base = tiny_config(cache, str(tmp_path / "s"), batch_size=1)
    with pytest.raises(ValueError, match="sweep row 'tiny'.*--size 24x32 cannot train at --batch-size 1"):
        run_sweep(base, [{"name": "ok"}, {"name": "tiny", "size": "24x32"}], str(tmp_path / "s"))
    assert not os.path.exists(tmp_path / "s" / "ok")


def test_sweep_table_shows_every_option_the_rows_vary():
    from fastmde.engine import TrainConfig
    from fastmde.engine.sweep import markdown_table, row_configs

    rows = [{"name": "fast", "lr": 1e-3, "batch-size": 2, "workers": 2}, {"name": "slow", "lr": 1e-4}]
    configs = row_configs(TrainConfig(), rows, "out")
    assert configs[0][1].batch_size == 2                      # command-line spellings work in rows
    metrics = dict(rms=1.0, rel=0.5, log10=0.25, delta1=0.1, delta2=0.2, delta3=0.3)
    results = [dict(name=n, config=c.to_dict(), metrics=metrics, train_s=1.0, it_per_s=2.0) for n, c in configs]
    lines = [line for line in markdown_table(results, 3, "paper").splitlines() if line.startswith("| ")]
    # workers and out differ too, but do not change a result: not columns
    assert lines[0].startswith("| configuration | model | size | loss | --batch-size | --lr | RMS |")
    assert lines[1].startswith("| fast | unet34-k3-1x1 | 288x384 | hu_blurred | 2 | 0.001 | 1.000 |")
    assert lines[2].startswith("| slow | unet34-k3-1x1 | 288x384 | hu_blurred | 1 | 0.0001 | 1.000 |")


def test_builtin_sweeps_and_row_errors(tmp_path):
    from fastmde.models import variants

    assert set(BUILTIN) == {"table1", "table3", "table4", "table5"}
    assert [r["loss"] for r in builtin_rows("table3")] == ["l1", "hu", "hu_blurred", "l1_hu", "l1_hu_blurred"]
    for name in ("table4", "table5"):
        assert all(r["model"] in variants() for r in builtin_rows(name))
    with pytest.raises(ValueError, match="unknown sweep"):
        read_rows("table9")
    toml = tmp_path / "rows.toml"
    toml.write_text('[[rows]]\nname = "a"\nlr = 0.001\n\n[[rows]]\nname = "b"\nsize = "64x80"\n')
    assert read_rows(str(toml)) == [{"name": "a", "lr": 0.001}, {"name": "b", "size": "64x80"}]
    from fastmde.engine import TrainConfig
    from fastmde.engine.sweep import row_configs

    with pytest.raises(ValueError, match="row 'x'.*unknown training option"):
        row_configs(TrainConfig(), [{"name": "x", "lrr": 1}], str(tmp_path))


def test_ddp_two_gloo_processes(cache, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", FASTMDE_QUIET="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fastmde", "train", "--epochs", "1", "--batch-size", "1", "--val-fraction", "0.4",
           "--out", str(out), "--no-test", *cli_model_args(), *cli_data_args(cache)]
    # Its own process group, so that a hang is cleaned up completely (ranks included).
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("DDP training timed out:\n" + stderr[-3000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "world 2" in stderr
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    assert len(records) == 1                               # only rank 0 writes
    # 10 frames: 4 held out, 6 trained on by two ranks -> 3 steps each.
    assert records[0]["step"] == 3
    # Each rank evaluates half of the validation set; the reduced metrics count all 4 images.
    assert records[0]["val"]["count"] == 4
    ckpt = read_checkpoint(str(out / "last.pt"))
    assert ckpt["sampler"]["world_size"] == 2 and ckpt["step"] == 3
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]

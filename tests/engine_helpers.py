"""Shared set-up of the engine tests: a tiny synthetic dataset and a tiny model configuration."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from fastmde.engine import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for a module's tests (autouse where imported): the engine's bitwise
    comparisons need run-to-run deterministic kernels (the C++ up-projection's weight gradient is
    summed in a scheduling-dependent order on several threads), and the CLI tests run fastmde in
    the test's own process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fastmde_cli(argv, capsys=None) -> tuple[int, str, str]:
    """``fastmde <argv>`` through the real entry point in this process: (exit status, stdout,
    stderr), read through pytest's ``capsys`` when given, else through redirected streams."""
    import contextlib
    import io

    from fastmde.cli import console_main

    argv = [str(a) for a in argv]
    if capsys is not None:
        capsys.readouterr()
        status = console_main(argv)
        out, err = capsys.readouterr()
        return status, out, err
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = console_main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The session's tiny synthetic dataset (``synthetic_cache``), for a module's CLI runs."""
    return synthetic_cache(tmp_path_factory)


def run_interrupted(driver: str, argv, **env) -> subprocess.CompletedProcess:
    """``python -c driver argv...`` in its own process (one thread, its own session, from the
    repository), for the Ctrl-C tests: ``driver`` hooks the trainer and sends itself SIGINT; ``env``
    adds environment variables. A command that does not stop within 240 s is killed and fails."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", **{k: str(v) for k, v in env.items()})
    proc = subprocess.Popen([sys.executable, "-c", driver, *map(str, argv)], cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("the interrupted command did not stop:\n" + err[-3000:])
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

FRAME_SIZE = (48, 64)      # synthetic frames (the real NYU size is 480x640)
MODEL_SIZE = (32, 48)      # internal network resolution
TRAIN_FRAMES, TEST_FRAMES = 10, 4


def tiny_config(cache_dir: str, out: str, **changes) -> TrainConfig:
    """The smallest model variant (ResNet18 encoder, 3x3 kernels, 1x1 reduction) on a few frames."""
    options = dict(
        model="unet34-k3-1x1", encoder=18, size=MODEL_SIZE, loss="hu_blurred",
        epochs=2, batch_size=2, lr=1e-3, seed=3, data_format="synthetic", cache_dir=cache_dir,
        synthetic_train=TRAIN_FRAMES, synthetic_test=TEST_FRAMES, synthetic_size=FRAME_SIZE,
        val_fraction=0.2, device="cpu", amp="none", workers=0, out=out, progress=False,
        eval_batch_size=2,
    )
    options.update(changes)
    return TrainConfig(**options)


def cli_data_args(cache_dir: str) -> list[str]:
    return ["--cache-dir", cache_dir, "--synthetic-train", str(TRAIN_FRAMES), "--synthetic-test", str(TEST_FRAMES),
            "--synthetic-size", "x".join(map(str, FRAME_SIZE))]


def cli_model_args() -> list[str]:
    return ["--model", "unet34-k3-1x1", "--encoder", "18", "--size", "x".join(map(str, MODEL_SIZE)),
            "--device", "cpu", "--amp", "none", "--workers", "0", "--no-progress"]


def files_in(path: str) -> list[str]:
    return sorted(os.listdir(path))


def synthetic_cache(tmp_path_factory) -> str:
    """One cache directory per test session: the tiny synthetic dataset is rendered once."""
    from fastmde import data

    cache = str(tmp_path_factory.getbasetemp() / "engine-synthetic-cache")
    data.default_synthetic_root(cache_dir=cache, train=TRAIN_FRAMES, val=TEST_FRAMES, size=FRAME_SIZE,
                                progress=False)
    return cache

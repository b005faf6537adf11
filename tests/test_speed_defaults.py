"""``--amp auto`` / ``--channels-last auto``: what they resolve to on a CPU with and without bf16
matrix units, and that ``fastmde train`` says and records what it picked."""
import pytest
import torch

from fastmde import _backend
from fastmde.engine.speed import describe_speed_choice, resolve_amp, resolve_channels_last

CPU = torch.device("cpu")


def _features(units: bool) -> dict:
    return {"amx_bf16": False, "avx512_bf16": units, "bf16_units": units, "avx512": True}


@pytest.mark.parametrize("units", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_auto_on_cpu_follows_the_bf16_units(monkeypatch, units):
    monkeypatch.setattr(_backend, "_cpu_features", _features(units))
    assert resolve_amp("auto", CPU) == (torch.bfloat16 if units else None)
    assert resolve_channels_last("auto", CPU) is units
    text = describe_speed_choice("auto", "auto", CPU)
    if units:
        assert text == "amp bfloat16, channels_last on (auto: this CPU has bf16 matrix units)"
    else:
        assert text == ("amp none (float32), channels_last off "
                        "(auto: this CPU has no bf16 matrix units: float32 is faster)")


def test_explicit_choices_are_kept(monkeypatch):
    monkeypatch.setattr(_backend, "_cpu_features", _features(True))
    assert resolve_amp("none", CPU) is None
    assert resolve_amp("fp16", CPU) is torch.float16
    assert resolve_channels_last("off", CPU) is False
    assert describe_speed_choice("none", "off", CPU) == "amp none (float32), channels_last off"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from engine_helpers import synthetic_cache

    return synthetic_cache(tmp_path_factory)


@pytest.mark.parametrize("units", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_train_prints_and_records_the_pick(monkeypatch, tmp_path, cache, units):
    from engine_helpers import tiny_config

    from fastmde.engine import Trainer

    monkeypatch.setattr(_backend, "_cpu_features", _features(units))
    lines = []
    cfg = tiny_config(cache, str(tmp_path / "run"), amp="auto", channels_last="auto", max_steps=1, epochs=1)
    trainer = Trainer(cfg, overwrite=True, log=lines.append)
    assert trainer.amp_dtype == (torch.bfloat16 if units else None)
    assert trainer.channels_last is units
    summary = trainer.fit()
    assert any(describe_speed_choice("auto", "auto", CPU) in line for line in lines)
    assert summary["resolved"]["amp"] == ("bfloat16" if units else "none")
    assert summary["resolved"]["channels_last"] is units
    saved = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert saved["resolved"] == summary["resolved"]
    assert saved["config"]["amp"] == "auto"


def test_eval_and_predict_stay_float32_on_a_cpu_with_bf16_units(monkeypatch):
    """Written depth maps and scored metrics: auto is float32 on the CPU (a bf16 output rounds the
    depth to 8 significant bits); training's auto is bf16 there."""
    monkeypatch.setattr(_backend, "_cpu_features", _features(True))
    assert resolve_amp("auto", CPU, inference=True) is None
    assert resolve_amp("bf16", CPU, inference=True) is torch.bfloat16
    assert resolve_amp("auto", CPU) is torch.bfloat16


_ALLOCATOR_PROBE = r"""
import ctypes, resource, sys
import torch
from fastmde.engine.speed import tune_cpu_allocator
note = tune_cpu_allocator()
print(note)
# six blocks of 6 MiB taken and given back in turn, as a training step's activations are: kept
# in the heap, they are touched again without new page faults
faults = []
for i in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(6 << 18) for _ in range(6)]   # 6 MiB of float32 each
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[-1])
"""


@pytest.mark.parametrize("setting", ["tuned", "default"])
def test_the_cpu_allocator_keeps_freed_blocks(setting):
    """The Trainer's allocator setting (``tune_cpu_allocator``): with it, a step's fresh blocks of
    a few MiB come back from the heap without page faults (glibc's default often hands them back
    to the system and faults them in again: 9184 faults per round of this pattern here);
    ``FASTMDE_MALLOC=default`` leaves glibc as it is."""
    import os
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.fail("this test needs Linux with glibc, the platform the setting is for")
    env = dict(os.environ, FASTMDE_MALLOC="default" if setting == "default" else "")
    out = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    note, faults = out[0], int(out[1])
    pages = (36 << 20) // 4096
    if setting == "tuned":
        assert "32 MiB" in note
        assert faults < pages // 10, faults
    else:
        # glibc's own dynamic threshold may or may not keep such blocks, depending on what the
        # process freed before (torch's import): only that fastmde left it alone is checked
        assert note == "None"


def test_train_names_the_allocator_setting(monkeypatch, tmp_path, cache):
    from engine_helpers import tiny_config

    from fastmde.engine import Trainer
    from fastmde.engine.speed import tune_cpu_allocator

    cfg = tiny_config(cache, str(tmp_path / "run"), max_steps=1, epochs=1)
    trainer = Trainer(cfg, overwrite=True, log=lambda line: None)
    note = tune_cpu_allocator()
    assert note is None or note in trainer.speed_choice

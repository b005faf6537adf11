"""Backend choice: the table, forcing, and clear errors for unavailable backends."""
import os
import subprocess
import sys

import pytest
import torch

import fastmde
from fastmde import _backend


@pytest.fixture
def restore_backend():
    yield
    _backend.set_backend(None)


def test_table_names_every_hot_path_and_device():
    table = fastmde.backends(("cpu", "cuda"))
    assert set(table) == {"depth_loss", "depth_metrics", "up_projection", "scale_invariant_loss"}
    for row in table.values():
        assert row["cpu"] in ("native", "reference")
        assert row["cuda"] in ("triton", "reference")


def test_forcing_reference_everywhere(restore_backend):
    fastmde.set_backend("reference")
    assert all(v == {"cpu": "reference"} for v in fastmde.backends(("cpu",)).values())
    pred = torch.rand(1, 1, 5, 5)
    assert torch.isfinite(fastmde.depth_loss(pred, pred + 1))


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(restore_backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fastmde.set_backend("triton")
    with pytest.raises(fastmde.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        fastmde.depth_loss(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5))


def test_forced_native_on_cuda_is_a_clear_error(restore_backend):
    fastmde.set_backend("native")
    with pytest.raises(fastmde.BackendUnavailableError, match="CPU tensors only"):
        _backend.choose("depth_loss", "cuda")


def test_unknown_backend_names_are_rejected():
    with pytest.raises(ValueError, match="not one of"):
        fastmde.set_backend("cuda")


def _run(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_env_variable_forces_backend_and_bad_values_fail():
    ok = _run("import fastmde; print(fastmde.backends(('cpu',))['depth_loss']['cpu'])", FASTMDE_BACKEND="reference")
    assert ok.returncode == 0 and ok.stdout.strip() == "reference"
    bad = _run("import fastmde", FASTMDE_BACKEND="cudnn")
    assert bad.returncode != 0 and "FASTMDE_BACKEND='cudnn'" in bad.stderr


def test_info_command_prints_versions_and_table():
    out = _run("from fastmde.cli import main; main(['info'])")
    assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout and "depth_loss" in out.stdout and "up_projection" in out.stdout


def test_native_extension_is_built():
    """CI builds fastmde._C; without it every CPU op would silently run on the reference."""
    assert _backend.native_module() is not None, _backend.native_error()


def test_missing_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings; sys.modules['fastmde._C'] = None\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import fastmde, torch\n"
        "    fastmde.depth_loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))\n"
        "    fastmde.depth_metrics(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))\n"
        "msgs = [str(w.message) for w in caught if 'fastmde._C' in str(w.message)]\n"
        "print(len(msgs)); print(msgs[0] if msgs else '')\n"
        "print(fastmde.backends(('cpu',))['depth_loss']['cpu'])\n"
    )
    out = _run(code, FASTMDE_QUIET="0")
    assert out.returncode == 0, out.stderr
    count, message, backend = out.stdout.strip().splitlines()
    assert count == "1" and "could not be loaded" in message and backend == "reference"


def test_kernels_package_is_installed_not_injected(tmp_path):
    """``fastmde.kernels`` comes from setup.py's package_dir mapping (a normal or an editable
    install), imported on demand: importing fastmde puts nothing into sys.modules for it."""
    code = (
        "import sys, fastmde\n"
        "print('fastmde.kernels' in sys.modules)\n"
        "import fastmde.kernels.depth_loss as k\n"
        "print(k.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, TRITON_INTERPRET="1"), timeout=120)
    assert out.returncode == 0, out.stderr
    injected, path = out.stdout.strip().splitlines()
    assert injected == "False"
    assert path.replace("\\", "/").endswith("kernels/depth_loss.py")


# --- the choice per dtype and layout ----------------------------------------------------------


@pytest.fixture
def slower_bf16_channels_last(monkeypatch):
    """A SLOWER_SETTINGS row as the benchmarks would write it: plain PyTorch faster for the
    up-projection in bf16 channels_last on CPUs (no CPU feature required)."""
    monkeypatch.setitem(_backend.SLOWER_SETTINGS, "up_projection",
                        [("cpu", "bfloat16", "channels_last", None, "measured faster here")])


def test_setting_of_names_dtype_and_layout():
    x = torch.zeros(2, 3, 4, 5)
    assert _backend.setting_of(x) == ("float32", "nchw")
    assert _backend.setting_of(x.bfloat16().contiguous(memory_format=torch.channels_last)) == ("bfloat16", "channels_last")
    # one channel: both layouts are the same memory, counted as NCHW
    assert _backend.setting_of(torch.zeros(2, 1, 4, 5).contiguous(memory_format=torch.channels_last))[1] == "nchw"


def test_a_slower_setting_is_served_by_the_reference(slower_bf16_channels_last, restore_backend):
    from fastmde.ops._dispatch import implementation

    default = _backend.choose("up_projection", "cpu")
    assert _backend.choose("up_projection", "cpu", "bfloat16", "channels_last") == "reference"
    assert _backend.choose("up_projection", "cpu", "bfloat16", "nchw") == default
    assert _backend.choose("up_projection", "cpu", "float32", "channels_last") == default
    assert _backend.choose("depth_loss", "cpu", "bfloat16", "channels_last") == _backend.choose("depth_loss", "cpu")
    x = torch.zeros(1, 4, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert implementation("up_projection", x.device, x) == ("reference", None)
    # shown per setting, with the reason, by backends() and fastmde info
    cell = fastmde.backends(("cpu",), per_setting=True)["up_projection"]["cpu"]["bfloat16/channels_last"]
    assert cell == "reference (measured faster here)"
    from fastmde.info import describe

    assert any("bfloat16/channels_last" in line and "measured faster here" in line for line in describe())
    # a forced backend is never overridden
    fastmde.set_backend("native")
    assert _backend.choose("up_projection", "cpu", "bfloat16", "channels_last") == "native"


def test_a_slower_setting_needs_its_cpu_feature(monkeypatch):
    monkeypatch.setitem(_backend.SLOWER_SETTINGS, "up_projection",
                        [("cpu", "bfloat16", None, "amx_bf16", "oneDNN on AMX")])
    monkeypatch.setattr(_backend, "_cpu_features", {"amx_bf16": False, "avx512_bf16": True,
                                                    "bf16_units": True, "avx512": True})
    default = _backend.choose("up_projection", "cpu")
    assert _backend.choose("up_projection", "cpu", "bfloat16", "nchw") == default
    monkeypatch.setattr(_backend, "_cpu_features", {"amx_bf16": True, "avx512_bf16": True,
                                                    "bf16_units": True, "avx512": True})
    assert _backend.choose("up_projection", "cpu", "bfloat16", "nchw") == "reference"


def test_the_up_projection_op_runs_the_reference_in_a_slower_setting(slower_bf16_channels_last, monkeypatch):
    """The op itself follows the per-setting choice: with the native kernels made to fail, the
    listed setting still runs (on the reference) and equals it; another setting reaches them."""
    from fastmde.ops.up_projection import upsample_conv2d_op
    from fastmde.reference.up_projection import upsample_conv2d_reference

    native = _backend.native_module()
    if native is None:
        pytest.fail("fastmde._C is not built")

    class Failing:
        def __getattr__(self, name):
            if name.startswith("upsample_conv2d"):
                raise AssertionError("the native kernel was called")
            return getattr(native, name)

    monkeypatch.setattr(_backend, "native_module", lambda: Failing())
    monkeypatch.setattr(_backend, "_native_has", lambda hot_path: True)
    x = torch.randn(1, 4, 3, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    w = torch.randn(2, 4, 3, 3).bfloat16()
    got = upsample_conv2d_op(x, w, [6, 10], False)
    torch.testing.assert_close(got, upsample_conv2d_reference(x, w, (6, 10), False))
    with pytest.raises(AssertionError, match="native kernel was called"):
        upsample_conv2d_op(x.contiguous(), w, [6, 10], False)


@pytest.mark.parametrize("hot_path", ["depth_loss", "depth_metrics", "scale_invariant_loss"])
def test_the_loss_and_metric_ops_follow_a_slower_setting(hot_path, monkeypatch):
    """Every op chooses per call from its input's dtype: a row for bfloat16 sends a bfloat16 call to
    the reference (the native kernels made to fail) while a float32 call still reaches them."""
    native = _backend.native_module()
    if native is None:
        pytest.fail("fastmde._C is not built")
    monkeypatch.setitem(_backend.SLOWER_SETTINGS, hot_path, [("cpu", "bfloat16", None, None, "measured faster here")])

    class Failing:
        def __getattr__(self, name):
            if name != "num_threads":
                raise AssertionError("the native kernel was called")
            return getattr(native, name)

    monkeypatch.setattr(_backend, "native_module", lambda: Failing())
    monkeypatch.setattr(_backend, "_native_has", lambda hot_path: True)
    target = torch.rand(2, 1, 6, 7) * 5 + 1
    pred = target * 1.1

    def run(p):
        if hot_path == "depth_loss":
            return fastmde.depth_loss(p, target, preset="hu_blurred")
        if hot_path == "depth_metrics":
            return fastmde.depth_metrics(p, target)["rms"]
        return fastmde.scale_invariant_loss(p, target)

    assert torch.isfinite(torch.as_tensor(run(pred.bfloat16())).float()).all()
    with pytest.raises(AssertionError, match="native kernel was called"):
        run(pred)


def test_cpu_features_are_booleans():
    features = _backend.cpu_features()
    assert set(features) >= {"amx_bf16", "avx512_bf16", "bf16_units"}
    assert all(isinstance(v, bool) for v in features.values())
    assert features["bf16_units"] == (features["amx_bf16"] or features["avx512_bf16"])

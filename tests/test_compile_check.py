"""Every Triton kernel compiles for sm_90 and sm_80 without a GPU, and compiles clean.

The quick subset of ``bench/compile_check.py`` (every kernel x fp32/fp16/bf16 x target at one
small shape, through the real host launchers) runs in a subprocess without ``TRITON_INTERPRET``
(the kernels must be JIT functions there, while this test session interprets them). It fails on
a compile error, any register spill, a fp16/bf16 ``tl.dot`` without HGMMA (sm_90) / HMMA (sm_80)
in the SASS, or shared memory above the target's limit. The recording part (which
specialisations the launchers ask for) is checked here too, without compiling.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "compile_check.py"
KERNELS = {"_depth_loss_kernel", "_depth_metric_sums_kernel", "_upsample_conv_kernel", "_weight_grad_kernel",
           "_bilinear_adjoint_kernel"}
TARGETS = ("sm90", "sm80")


def _run(*args, timeout=1500):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "quick.json"
    proc = _run("--quick", "--jobs", "2", "--timeout", "300", "--json", str(out))
    assert out.exists(), f"compile check produced no report:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text())


@pytest.mark.parametrize("target", TARGETS)
def test_quick_subset_compiles_clean(quick, target):
    proc, rows = quick
    mine = [r for r in rows if r["target"] == target]
    bad = [f"{r['kernel']} [{r['dtypes']}] {r['specialisation']}: {'; '.join(r['problems'])}" for r in mine
           if r["problems"]]
    assert not bad, f"{len(bad)} of {len(mine)} specialisations fail on {target}:\n" + "\n".join(bad)
    for r in mine:  # the report itself is complete
        assert r["ok"] and r["registers"] > 0 and r["compile_s"] > 0
        if r["dot_low_precision"]:
            assert r["tensor_core_instructions"] > 0


def test_quick_subset_covers_every_kernel_dtype_and_target(quick):
    proc, rows = quick
    seen = {(r["target"], r["kernel"], d) for r in rows for d in r["dtypes"].split(",")}
    for target in TARGETS:
        for kernel in KERNELS:
            for dtype in ("fp32", "fp16", "bf16"):
                assert (target, kernel, dtype) in seen, f"{kernel} {dtype} {target} not compiled by the quick check"
    # the fp16/bf16 GEMMs are where tensor cores are demanded
    assert any(r["dot_low_precision"] and r["target"] == "sm90" for r in rows)
    assert proc.returncode == 0 or any(r["problems"] for r in rows)


def test_recorded_specialisations_follow_the_launchers():
    """No compile: the launchers' CUDA configs and Triton's own specialisation rules are what get
    recorded (channels_last: unit channel stride; runtime sizes stay runtime; 132 SMs on sm_90)."""
    code = r"""
import sys, json
sys.path.insert(0, "bench")
import torch, compile_check as cc
specs = cc.collect([("bn", cc.upproj_call(3, 24, 40, 5, 7, 10, 14, 3, torch.bfloat16, True, bn=True)),
                    ("metrics", cc.metrics_call(2, 48, 64, torch.float16, True, "eigen"))], ["sm90"])
print(json.dumps([[s.kernel, s.label(), s.dtypes(), s.signature.get("KSIZE"), s.signature.get("H")] for s in specs]))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    specs = json.loads(proc.stdout.strip().splitlines()[-1])
    kernels = [s[0] for s in specs]
    assert kernels.count("_upsample_conv_kernel") == 2  # forward (upsample, affine, stats) and grad_out conv
    assert {"_bilinear_adjoint_kernel", "_weight_grad_kernel", "_depth_metric_sums_kernel"} <= set(kernels)
    fwd = next(s for s in specs if s[0] == "_upsample_conv_kernel" and "STATS" in s[1])
    assert "sxc=1" in fwd[1] and "UPSAMPLE" in fwd[1] and "AFFINE" in fwd[1] and "BLOCK_M=128" in fwd[1]
    assert fwd[2] == "bf16,fp32" and fwd[3] == "i32" and fwd[4] == "i32"  # k and H are runtime ints

"""The README and the docs pages it sends a newcomer to: the set-up commands CI runs, every
``fastmde`` command line parses into a valid configuration, the Python examples run, every link
and anchor resolves."""
from __future__ import annotations

import os
import re
import shlex

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the pages whose commands and links are checked here (docs/cli.md has its own test)
PAGES = ["README.md", "docs/training.md", "docs/dropin.md", "docs/models.md", "docs/api.md",
         "docs/data-python.md"]
INSTALL = "python3 -m pip install -q torch==2.13.0 ninja pybind11 setuptools wheel && " \
          "python3 -m pip install -q --no-build-isolation -e \".[test]\""


def read(page: str) -> str:
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_keeps_the_two_setup_commands():
    # .ci/run and the project's checks run exactly these lines
    commands = [b.strip() for b in blocks(read("README.md"), "bash")]
    assert f"{INSTALL} && python3 bench/run.py" in commands
    assert f"{INSTALL} && python3 -m pytest -q -n 2" in commands
    ci = read(".ci/run")
    assert f"{INSTALL} && python3 -m pytest -q -n 2" in ci


@pytest.mark.parametrize("page", PAGES)
def test_command_lines_parse_into_valid_configurations(page):
    from fastmde.cli import build_parser
    from fastmde.engine.config import config_from_args

    lines = [line for block in blocks(read(page), "bash") for line in block.splitlines()
             if line.startswith("fastmde ")]
    for line in lines:
        argv = shlex.split(line, comments=True)[1:]
        args = build_parser([argv[0]]).parse_args(argv)
        if argv[0] in ("train", "sweep"):
            config_from_args(args)
    if page in ("README.md", "docs/training.md"):
        assert {line.split()[1] for line in lines} >= {"train", "eval", "predict", "sweep"}


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("page", PAGES)
def test_links_and_anchors_resolve(page):
    text = read(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path)) if path else \
            os.path.join(REPO, page)
        assert os.path.exists(resolved), f"{page}: link to {target} (no {os.path.relpath(resolved, REPO)})"
        if anchor:
            assert anchor in _anchors(read(os.path.relpath(resolved, REPO))), f"{page}: no heading for {target}"


def test_readme_python_training_example_is_a_valid_configuration(monkeypatch):
    # the example as written, with train() and load() recording instead of running (a run of
    # the default synthetic set would render 1100 frames)
    import fastmde
    import fastmde.engine

    seen = {}
    monkeypatch.setattr(fastmde.engine, "train", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(fastmde, "load", lambda path, device: seen.setdefault("load", (path, device)))
    code = next(b for b in blocks(read("README.md"), "python") if "TrainConfig(" in b)
    exec(compile(code, "README.md", "exec"), {})
    cfg = seen["cfg"]
    assert (cfg.model, cfg.size, cfg.epochs, cfg.out) == ("unet34-k3-1x1", (96, 128), 3, "runs/first")
    assert seen["load"] == ("runs/first", "cpu")


@pytest.mark.filterwarnings("ignore:.*count as δ hits:UserWarning")   # an untrained model, under 'hu'
def test_readme_dropin_example_runs_on_examples_adopt():
    # the drop-in lines on examples/adopt.py's plain-PyTorch project (its authors'-style blocks)
    import importlib.util

    spec = importlib.util.spec_from_file_location("fastmde_readme_adopt", os.path.join(REPO, "examples", "adopt.py"))
    adopt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adopt)
    torch.manual_seed(0)
    model = adopt.DepthUNet((64, 96))
    image, depth = adopt.make_batch(1, (64, 96))
    pred = model(image)
    code = next(b for b in blocks(read("README.md"), "python") if "fastmde.patch(model)" in b)
    namespace = {"model": model, "pred": pred, "depth": depth}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["report"].replaced == {f"decoder.up{i}": "freeman2021_1x1" for i in range(1, 5)}
    assert namespace["loss"].requires_grad and torch.isfinite(namespace["loss"])
    assert set(namespace["metrics"].compute()) >= {"rms", "rel", "delta1", "count"}


def test_api_tour_runs():
    code = blocks(read("docs/api.md"), "python")[0].replace("480, 640", "24, 32")   # small shapes
    namespace = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    assert namespace["y"].shape == (1, 128, 36, 48)
    assert set(namespace["terms"]) >= {"total", "depth", "gradient", "normal"}

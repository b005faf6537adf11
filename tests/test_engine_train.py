"""Training end to end on a tiny synthetic dataset: logs, checkpoints, exact resumption."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from engine_helpers import one_thread, synthetic_cache, tiny_config  # noqa: F401 (one_thread: autouse)
from fastmde.engine import TrainConfig, read_checkpoint, train
from fastmde.engine.train import Trainer




@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    summary = train(tiny_config(cache, out))
    return out, summary


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer(a: dict, b: dict):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k]), (i, k)


def test_run_writes_log_checkpoints_and_summary(uninterrupted):
    out, summary = uninterrupted
    assert {"last.pt", "best.pt", "log.jsonl", "summary.json"} <= set(os.listdir(out))
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2]
    steps_per_epoch = records[0]["step"]
    assert records[1]["step"] == 2 * steps_per_epoch == summary["step"]
    for r in records:
        assert set(r["val"]) == {"rms", "rel", "log10", "delta1", "delta2", "delta3", "silog", "sq_rel", "rmse_log",
                                 "count"}
        assert r["val"]["count"] == 2  # 20% of the 10 training frames held out, every one counted
        assert r["train_loss"] > 0 and r["it_per_s"] > 0
    ckpt = read_checkpoint(os.path.join(out, "last.pt"))
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (2, 0, summary["step"])
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python", "augment"}
    for key in ("optimizer", "scheduler", "scaler", "config", "model_spec", "history"):
        assert key in ckpt
    best = read_checkpoint(os.path.join(out, "best.pt"))
    values = [r["val"]["delta1"] for r in records]
    assert best["best"]["value"] == max(values)
    assert best["optimizer"] is None and best["resumable"] is False   # weights only, for eval/predict
    # Training changed the weights, and the loss went down from the first steps.
    assert summary["history"][-1]["train_loss"] < summary["history"][0]["train_loss"] * 1.5


def test_resume_after_max_steps_gives_identical_weights(uninterrupted, cache, tmp_path):
    full_out, summary = uninterrupted
    steps_per_epoch = summary["step"] // 2
    out = str(tmp_path / "resumed")
    # Stops mid-epoch 2; validating mid-epoch (every 3 steps) must not disturb training either.
    first = train(tiny_config(cache, out, max_steps=steps_per_epoch + 2, val_every=3))
    assert first["stopped"] == "max_steps"
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [r["step"] for r in records] == [3, 4, 6]      # val_every 3, epoch end 4, stop at 6
    assert [r["partial"] for r in records] == [True, False, True]
    ckpt = read_checkpoint(os.path.join(out, "last.pt"))
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (1, 2)
    second = train(tiny_config(cache, out), resume=True)
    assert second["stopped"] == "completed" and second["step"] == summary["step"]
    a, b = read_checkpoint(os.path.join(full_out, "last.pt")), read_checkpoint(os.path.join(out, "last.pt"))
    assert_same_state(a["model"], b["model"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert a["history"][-1]["val"] == b["history"][-1]["val"]


def test_resume_after_keyboard_interrupt_gives_identical_weights(uninterrupted, cache, tmp_path, monkeypatch):
    full_out, _ = uninterrupted
    out = str(tmp_path / "interrupted")
    original = Trainer.train_step

    def interrupt_at_step_3(self, batch):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(cache, out))
    monkeypatch.setattr(Trainer, "train_step", original)
    ckpt = read_checkpoint(os.path.join(out, "last.pt"))
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (0, 3, 3)
    train(tiny_config(cache, out), resume=True)
    a, b = read_checkpoint(os.path.join(full_out, "last.pt")), read_checkpoint(os.path.join(out, "last.pt"))
    assert_same_state(a["model"], b["model"])


def test_different_seed_gives_different_weights(uninterrupted, cache, tmp_path):
    """The resume tests would pass vacuously if training ignored the data; it does not."""
    full_out, _ = uninterrupted
    out = str(tmp_path / "other-seed")
    train(tiny_config(cache, out, seed=4, max_steps=2))
    a, b = read_checkpoint(os.path.join(full_out, "last.pt")), read_checkpoint(os.path.join(out, "last.pt"))
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"] if a["model"][k].is_floating_point())


def test_run_directory_guard_and_resume_errors(uninterrupted, cache, tmp_path):
    full_out, _ = uninterrupted
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_config(cache, full_out))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        Trainer(tiny_config(cache, str(tmp_path / "empty")), resume=True)
    from fastmde.engine import CheckpointError

    with pytest.raises(CheckpointError, match=r"--size 32x48 \(saved\) -> 64x64 \(now\)"):
        Trainer(tiny_config(cache, full_out, size=(64, 64)), resume=True)
    # every option that may not change is named, with both values
    with pytest.raises(CheckpointError) as info:
        Trainer(tiny_config(cache, full_out, loss="l1", seed=9, encoder=34), resume=True)
    for part in ("--encoder 18 (saved) -> 34 (now)", "--loss hu_blurred (saved) -> l1 (now)",
                 "--seed 3 (saved) -> 9 (now)"):
        assert part in str(info.value)


def test_time_limit_stops_resumably(cache, tmp_path):
    out = str(tmp_path / "timed")
    summary = train(tiny_config(cache, out, epochs=50, time_limit=1.0))
    assert summary["stopped"] == "time_limit"
    assert 0 < summary["step"] < 50 * 4
    ckpt = read_checkpoint(os.path.join(out, "last.pt"))
    assert ckpt["step"] == summary["step"] and ckpt["elapsed"] >= 1.0
    # The limit is the run's total: resuming with the same limit stops at once, a larger one continues.
    assert train(tiny_config(cache, out, epochs=50, time_limit=1.0), resume=True)["step"] == summary["step"]


def test_cosine_with_a_time_limit_ends_the_run_near_zero_rate(cache, tmp_path):
    """The trainer drives the cosine with its clock: a run stopped by --time-limit far short of
    its epochs ends at a rate near 0 (the step count alone would leave it near the peak)."""
    out = str(tmp_path / "timed-cosine")
    summary = train(tiny_config(cache, out, epochs=200, time_limit=3.0, cosine=True, val_every=2))
    assert summary["stopped"] == "time_limit"
    steps_per_epoch = Trainer(tiny_config(cache, str(tmp_path / "probe"))).steps_per_epoch
    assert summary["step"] < 0.1 * 200 * steps_per_epoch       # step-only cosine factor > 0.97 here
    rates = [r["lr"] for r in summary["history"]]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.1 * 1e-3
    assert read_checkpoint(os.path.join(out, "last.pt"))["elapsed"] >= 3.0


def test_augment_parts_reach_the_trainer_and_survive_the_checkpoint(cache, tmp_path):
    from fastmde.cli import build_parser
    from fastmde.engine.train import config_from_args

    args = build_parser().parse_args(["train", "--augment-parts", "rotate, flip", "--out", str(tmp_path / "x")])
    cfg = config_from_args(args)
    assert cfg.augment_parts == ("flip", "rotate")
    assert TrainConfig.from_dict(cfg.to_dict()).augment_parts == ("flip", "rotate")
    trainer = Trainer(tiny_config(cache, str(tmp_path / "flip"), augment_parts=["flip"]))
    aug = trainer.augment
    assert (aug.flip, aug.color, aug.crop, aug.rotate) == (0.5, None, 0.0, 0.0)
    assert Trainer(tiny_config(cache, str(tmp_path / "none"), augment=False)).augment is None
    with pytest.raises(ValueError, match="augment_parts|augmentation parts"):
        TrainConfig(augment_parts="flip,zoom")


def test_epochs_use_full_batches_only(cache, tmp_path, monkeypatch):
    """A short last batch is dropped (BatchNorm would normalise over its one or two items);
    data smaller than one batch still trains on its single partial batch."""
    sizes = []
    original = Trainer.train_step

    def recording(self, batch):
        sizes.append(len(batch["image"]))
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", recording)
    n = len(Trainer(tiny_config(cache, str(tmp_path / "probe"))).train_set)
    assert n % 3 != 0
    summary = train(tiny_config(cache, str(tmp_path / "b3"), batch_size=3, epochs=1))
    assert sizes == [3] * (n // 3) and summary["step"] == n // 3
    sizes.clear()
    summary = train(tiny_config(cache, str(tmp_path / "big"), batch_size=n + 5, epochs=1))
    assert sizes == [n] and summary["step"] == 1


def test_weight_average_follows_its_formula():
    """a <- a + (1 - d_t)(w - a) with d_t = min(decay, (1 + t)/(10 + t)); integer buffers copied."""
    from fastmde.engine.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        average.update(model)
        d = min(0.5, (1 + t) / (10 + t))         # 2/11, 3/12, then the 0.5 cap
        for k, v in model.state_dict().items():
            expected[k] = v.clone() if not v.is_floating_point() else expected[k] + (1 - d) * (v - expected[k])
        for k, v in average.module.state_dict().items():
            torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6, msg=k)
    assert not average.module.training and not any(p.requires_grad for p in average.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_lr_factor_follows_its_formula():
    from fastmde.engine.schedule import lr_factor

    e = 10  # steps per epoch
    assert [lr_factor(s, steps_per_epoch=e, epochs=3) for s in (0, 29, 500)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, steps_per_epoch=e, epochs=3, warmup=4) for s in (0, 1, 3, 4)] == [0.25, 0.5, 1.0, 1.0]
    step = dict(steps_per_epoch=e, epochs=9, lr_step=2, lr_gamma=0.5)
    assert [lr_factor(s, **step) for s in (0, 19, 20, 39, 40)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    cos = dict(steps_per_epoch=e, epochs=2, cosine=True)
    assert lr_factor(0, **cos) == 1.0 and lr_factor(20, **cos) == 0.0 and lr_factor(99, **cos) == 0.0
    assert lr_factor(10, **cos) == pytest.approx(0.5)
    assert lr_factor(0, **cos, warmup=2) == 0.5
    with pytest.raises(ValueError, match="not both"):
        tiny_config("c", "o", lr_step=1, cosine=True)


def test_cosine_under_a_time_limit_follows_the_clock_and_ends_at_zero():
    """With --time-limit the cosine's progress is the larger of the step and time fractions."""
    from fastmde.engine.schedule import lr_factor, make_scheduler

    cos = dict(steps_per_epoch=10, epochs=4, cosine=True)
    assert lr_factor(0, **cos, time_fraction=0.5) == pytest.approx(0.5)
    assert lr_factor(20, **cos, time_fraction=0.1) == pytest.approx(0.5)   # the epochs end first
    assert lr_factor(1, **cos, time_fraction=1.7) == 0.0                   # past the limit: stays at 0
    assert lr_factor(0, **cos, time_fraction=0.5, warmup=2) == pytest.approx(0.25)

    now = [0.0]
    cfg = tiny_config("c", "o", cosine=True, time_limit=200.0, epochs=100)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = make_scheduler(opt, cfg, steps_per_epoch=10, clock=lambda: now[0])
    rates = []
    for t in (50.0, 100.0, 150.0, 200.0):
        now[0] = t
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * max(s / 1000, t / 200)))
                for s, t in zip((1, 2, 3, 4), (50.0, 100.0, 150.0, 200.0))]
    assert rates == pytest.approx(expected) and rates[-1] == 0.0
    # without a time limit the clock is ignored: the schedule is a function of the step alone
    plain = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3),
                           tiny_config("c", "o", cosine=True, epochs=100), steps_per_epoch=10, clock=lambda: 1e9)
    assert plain.get_last_lr() == [1e-3]


def test_ema_cosine_warmup_run_scores_the_average_and_resumes_bitwise(uninterrupted, cache, tmp_path):
    """With --ema: validation and best.pt use the average, last.pt holds both weight sets; with a
    per-step schedule (warm-up, cosine) too, an interrupted run resumes to the same weights,
    average and rates bitwise."""
    from fastmde.engine.checkpoint import build_model_from_checkpoint
    from fastmde.engine.schedule import lr_factor

    full, cut = str(tmp_path / "ema-full"), str(tmp_path / "ema-cut")
    options = dict(ema=0.9, cosine=True, warmup=3)
    summary = train(tiny_config(cache, full, **options))
    steps_per_epoch = summary["step"] // 2
    for record in summary["history"]:   # the rate of the next update, after each epoch
        assert record["lr"] == pytest.approx(1e-3 * lr_factor(record["step"], steps_per_epoch=steps_per_epoch,
                                                               epochs=2, cosine=True, warmup=3))
    last = read_checkpoint(os.path.join(full, "last.pt"))
    assert last["ema"]["updates"] == summary["step"]
    assert any(not torch.equal(last["model"][k], last["ema"]["model"][k]) for k in last["model"])
    best = read_checkpoint(os.path.join(full, "best.pt"))
    assert best["ema"] is None and best["best"]["step"] in {r["step"] for r in summary["history"]}
    loaded = build_model_from_checkpoint(last).state_dict()
    assert_same_state(loaded, last["ema"]["model"])    # eval / predict load the average

    train(tiny_config(cache, cut, **options, max_steps=3))
    train(tiny_config(cache, cut, **options), resume=True)
    again = read_checkpoint(os.path.join(cut, "last.pt"))
    assert_same_state(last["ema"]["model"], again["ema"]["model"])
    assert_same_state(last["model"], again["model"])
    assert_same_optimizer(last["optimizer"], again["optimizer"])
    assert last["scheduler"] == again["scheduler"]
    from fastmde.engine import CheckpointError

    plain_out, _ = uninterrupted
    with pytest.raises(CheckpointError, match=r"--ema unset \(saved\) -> 0.9 \(now\)"):
        Trainer(tiny_config(cache, plain_out, ema=0.9), resume=True)


# ---------------------------------------------------------------- options defined once

def _example_values(f, default):
    """Values unlike the default for option ``f``, from its type and choices (a new option is
    covered without editing this test)."""
    import typing

    from fastmde.engine.config import TrainConfig, choices_of

    choices = choices_of(f)
    if choices is not None:
        return [c for c in choices if c != default]
    kind = typing.get_type_hints(TrainConfig)[f.name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args and typing.get_origin(kind) is not tuple else kind
    if base is bool:
        return [not default] if default is not None else [True, False]
    if base is int:
        return [v for v in (2, 3, 7) if v != default]
    if base is float:
        return [v for v in (0.5, 0.25, 0.9, 2.5) if v != default]
    if typing.get_origin(base) is tuple and typing.get_args(base) == (int, int):    # a size, or None
        return [(40, 56)]
    if typing.get_origin(kind) is tuple:
        return [tuple(default[:1])]
    return ["some/path-or-name"]


#: options that only apply beside others (TrainConfig refuses them alone): that context
NEEDS = {name: {"data_format": "list"} for name in ("dataset", "image_root", "depth_root", "depth_scale", "kb_crop")}
NEEDS["lr_gamma"] = {"lr_step": 1}          # the factor of the step decay, refused without it


def test_every_option_reaches_the_config_and_survives_save_load(tmp_path):
    """For every TrainConfig field on the command line: a non-default value typed as a user
    would reaches the config, and the config survives to_dict -> JSON -> from_dict."""
    import dataclasses

    from fastmde.cli import build_parser
    from fastmde.engine.config import config_from_args, default_of, fields, flag_of, option_text

    parser = build_parser()
    context = ["--data", str(tmp_path / "data")]     # formats other than synthetic need a path
    cli_fields = [f for f in fields() if f.metadata["cli"]]
    assert len(cli_fields) >= 40         # the loop below really covers the option list
    assert {f.name for f in fields()} - {f.name for f in cli_fields} == {"extra"}
    for f in cli_fields:
        default = default_of(f.name)
        reached = None
        for value in _example_values(f, default):
            if isinstance(value, bool):
                argv = [flag_of(f) if value else "--no-" + flag_of(f)[2:]]
            else:
                argv = [flag_of(f), option_text(value)]
            needs = NEEDS.get(f.name, {})
            extra = ([] if f.name == "data" else context) + [
                word for name, v in needs.items() for word in ("--" + name.replace("_", "-"), option_text(v))]
            try:
                cfg = config_from_args(parser.parse_args(["train", *extra, *argv]))
            except ValueError:
                continue          # e.g. a value the option's own check refuses; try the next
            expected = TrainConfig(**{**({} if f.name == "data" else {"data": context[1]}), **needs, f.name: value})
            assert getattr(cfg, f.name) == getattr(expected, f.name) != default, f.name
            reached = cfg
            break
        assert reached is not None, f"no example value of {f.name} reached the config from the command line"
        again = TrainConfig.from_dict(json.loads(json.dumps(reached.to_dict())))
        assert dataclasses.astuple(again) == dataclasses.astuple(reached), f.name
    # defaults: the parser's and the dataclass's agree (one definition)
    cfg = config_from_args(parser.parse_args(["train"]))
    assert cfg == TrainConfig()


def test_encoder_in_extra_is_the_encoder_option():
    """Configurations saved before --encoder / --normalize were options keep them in ``extra``."""
    old = TrainConfig(extra={"encoder": 18, "normalize": True, "kernel_size": 5})
    assert (old.encoder, old.normalize, old.extra) == (18, True, {"kernel_size": 5})
    assert old.model_spec()["overrides"] == {"kernel_size": 5, "encoder": 18, "normalize": True}
    with pytest.raises(ValueError, match=r"encoder \(--encoder\) is given twice"):
        TrainConfig(encoder=34, extra={"encoder": 18})
    with pytest.raises(ValueError, match=r"model \(--model\) must be one of"):
        TrainConfig(model="unet99")


# ---------------------------------------------------------------- configurations checked early

@pytest.mark.parametrize("model, size, smallest", [
    ("unet34-k3-1x1", "24x32", "27x36"), ("unet34-k3", "16x16", "33x33"), ("hu34", "16x16", "33x33")])
def test_untrainable_size_is_refused_before_data_is_built(model, size, smallest, tmp_path, monkeypatch):
    """At batch 1 a 1x1 deepest map (ResNet: stride 32) gives BatchNorm one value per channel."""
    from fastmde.cli import main
    from fastmde.engine import datasets

    def no_data(cfg):
        raise AssertionError("the data was built before the configuration was checked")

    monkeypatch.setattr(datasets, "build_datasets", no_data)
    with pytest.raises(ValueError) as info:
        main(["train", "--model", model, "--size", size, "--out", str(tmp_path / "x"), "--device", "cpu"])
    message = str(info.value)
    assert f"--size {size}" in message and "--batch-size 1" in message and "1x1" in message
    assert f"--size {smallest}" in message and "stride 32" in message and "--batch-size 2" in message
    from fastmde.engine.train import check_trainable

    check_trainable(TrainConfig(model=model, size=size, batch_size=2))      # two images: fine
    h, w = (int(v) for v in smallest.split("x"))
    check_trainable(TrainConfig(model=model, size=(h, w)))                  # the suggestion trains
    g = math.gcd(h, w)
    with pytest.raises(ValueError):             # the next smaller size of that aspect ratio does not
        check_trainable(TrainConfig(model=model, size=(h - h // g, w - w // g)))


def test_too_few_items_per_process_for_the_batch_norm_is_refused(cache, tmp_path):
    """The per-process batch can be smaller than --batch-size when the data is: one item per
    process at a 1x1 deepest map cannot train either (checked once the data is known)."""
    with pytest.raises(ValueError, match="gets 1 training item.*--batch-size 2.*--size 24x32"):
        Trainer(tiny_config(cache, str(tmp_path / "one"), size=(24, 32), limit_train=2, val_fraction=0.5))
    Trainer(tiny_config(cache, str(tmp_path / "two"), size=(24, 32), limit_train=4, val_fraction=0.5))


# ---------------------------------------------------------------- resumes that change options

def _record_rates(monkeypatch):
    rates = []
    original = Trainer.train_step

    def recording(self, batch):
        rates.append(self.optimizer.param_groups[0]["lr"])
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", recording)
    return rates


def test_resume_with_a_new_learning_rate_trains_at_it(cache, tmp_path, monkeypatch):
    out = str(tmp_path / "lr")
    rates = _record_rates(monkeypatch)
    train(tiny_config(cache, out, lr=1e-3, max_steps=1))
    logs = []
    trainer = Trainer(tiny_config(cache, out, lr=1e-5, max_steps=3), resume=True, log=logs.append)
    trainer.fit()
    assert rates == [1e-3, 1e-5, 1e-5]
    assert any("--lr 0.001 (saved) -> 1e-05 (now)" in line for line in logs)
    last = read_checkpoint(os.path.join(out, "last.pt"))
    assert last["config"]["lr"] == 1e-5 and last["optimizer"]["param_groups"][0]["lr"] == 1e-5
    assert last["option_changes"] == [{"step": 1, "changes": {"lr": [1e-3, 1e-5], "max_steps": [1, 3]}}]


def test_resume_with_a_new_schedule_follows_it_from_there(cache, tmp_path, monkeypatch):
    from fastmde.engine.schedule import lr_factor

    out = str(tmp_path / "cos")
    rates = _record_rates(monkeypatch)
    train(tiny_config(cache, out, max_steps=2))
    Trainer(tiny_config(cache, out, cosine=True, max_steps=4), resume=True).fit()
    expected = [1e-3 * lr_factor(s, steps_per_epoch=4, epochs=2, cosine=True) for s in (2, 3)]
    assert rates[:2] == [1e-3, 1e-3] and rates[2:] == pytest.approx(expected)


def test_resume_at_another_batch_size_sees_every_item_once(cache, tmp_path, monkeypatch):
    """Six items at batch 2, stopped after 2 steps, resumed at batch 3: the position is kept in
    samples, so the epoch's last two items are trained on (one batch of 2) and none twice."""
    seen = []
    original = Trainer.train_step

    def recording(self, batch):
        seen.extend(batch["image"].clone())
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", recording)
    options = dict(limit_train=8, val_fraction=0.25, augment=False, epochs=1)
    out = str(tmp_path / "batch")
    first = Trainer(tiny_config(cache, out, batch_size=2, max_steps=2, **options))
    items = [first.train_set[i]["image"] for i in range(len(first.train_set))]
    assert len(items) == 6
    first.fit()
    resumed = Trainer(tiny_config(cache, out, batch_size=3, **options), resume=True)
    summary = resumed.fit()
    assert summary["step"] == 3 and len(seen) == 6
    matches = [[i for i, item in enumerate(items) if torch.equal(item, image)] for image in seen]
    assert sorted(m[0] for m in matches) == list(range(6))
    last = read_checkpoint(os.path.join(out, "last.pt"))
    assert last["config"]["batch_size"] == 3 and (last["epoch"], last["sampler"]["start"]) == (1, 0)


# ---------------------------------------------------------------- --init-from

def test_init_from_copies_the_weights_not_the_optimizer(uninterrupted, cache, tmp_path):
    full_out, _ = uninterrupted
    source = read_checkpoint(os.path.join(full_out, "last.pt"))
    trainer = Trainer(tiny_config(cache, str(tmp_path / "init"), init_from=os.path.join(full_out, "last.pt")))
    assert_same_state(trainer.model.state_dict(), source["model"])
    assert trainer.optimizer.state_dict()["state"] == {} and trainer.step == 0
    summary = trainer.fit()
    assert summary["config"]["init_from"] == os.path.join(full_out, "last.pt")
    from fastmde.engine import CheckpointError

    # tiny_config's encoder is ResNet18: both are named by it
    with pytest.raises(CheckpointError, match="holds a unet18-k3-1x1 model, but --model/--encoder make a unet18-k3:"):
        Trainer(tiny_config(cache, str(tmp_path / "other"), model="unet34-k3",
                            init_from=os.path.join(full_out, "last.pt")))
    # another encoder is another network, named as such (formerly a state-dict mismatch)
    with pytest.raises(CheckpointError, match="holds a unet18-k3-1x1 model, but --model/--encoder make a unet34-k3-1x1:"):
        Trainer(tiny_config(cache, str(tmp_path / "deeper"), encoder=34,
                            init_from=os.path.join(full_out, "last.pt")))
    with pytest.raises(ValueError, match="choose one initialisation"):
        tiny_config(cache, "o", init_from="a.pt", pretrained="b.pth")

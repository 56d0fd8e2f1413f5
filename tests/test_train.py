import argparse
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
from PIL import Image

import repnext.train as train_module
from repnext.checkpoint import CheckpointError
from repnext.cli import main
from repnext.datasets import (
    PHOTOS,
    TRAIN_FRACTION,
    DatasetError,
    _crop_box,
    check_image_folder,
    materialize_dataset,
    photo_crops,
)
from repnext.experiments import ExperimentError, train_commands
from repnext.train import (
    LOCK_NAME,
    LOG_KEYS,
    TrainConfig,
    add_arguments,
    config_from_args,
    exclusive_out,
    parse_model_kwargs,
    train,
)

# A four-stage RepNeXt small enough for a CPU test; the factories accept any embed_dim/depth.
TINY = dict(embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1))
CLASSES = ("blue", "green", "red")


def _write_folder(root, train_per_class=4, val_per_class=2, size=32):
    """3 classes told apart by their dominant channel, random textures within a class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for channel, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
                pixels[..., 2 - channel] += 150
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("data") / "tiny")


def _config(folder, out, **overrides) -> TrainConfig:
    settings = dict(epochs=2, img_size=32, batch_size=4, warmup_epochs=0, lr=2e-3, model_kwargs=TINY, threads=1)
    return TrainConfig("repnext_m0", str(folder), str(out), **{**settings, **overrides})


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """A seeded two-epoch run: (its output folder, the rows train() returned)."""
    out = tmp_path_factory.mktemp("reference")
    return out, train(_config(folder, out))


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _weights(path):
    return _state(path)["model"]


def _assert_same_weights(first, second):
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_two_epochs_write_deit_log_and_upstream_checkpoints(reference):
    out, rows = reference
    lines = (out / "log.txt").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert logged == rows
    assert [list(row) for row in logged] == [list(LOG_KEYS)] * 2  # upstream's keys, in upstream's order
    assert [row["epoch"] for row in logged] == [0, 1]
    assert logged[0]["train_lr"] == 2e-3 > logged[1]["train_lr"]  # cosine decay, stepped once per epoch
    assert all(0 <= row["test_acc1"] <= row["test_acc5"] == 100.0 for row in logged)  # 3 classes: top-5 is everything
    checkpoint = _state(out / "checkpoint.pth")
    assert {"model", "optimizer", "lr_scheduler", "epoch", "args"} <= checkpoint.keys()
    assert checkpoint["epoch"] == 1 and checkpoint["args"]["model"] == "repnext_m0"
    assert checkpoint["class_names"] == list(CLASSES)
    assert checkpoint["max_accuracy"] == max(row["test_acc1"] for row in logged)
    assert _state(out / "best.pth")["epoch"] == max(logged, key=lambda row: row["test_acc1"])["epoch"]


def test_log_parser_reads_the_training_log(reference, recwarn):
    from repnext.analysis.logs import read_log, run_metrics

    out, rows = reference
    run = read_log(out / "log.txt")
    assert (run.format, run.name, run.warnings) == ("deit", out.name, [])
    assert run.records["top1"].tolist() == [row["test_acc1"] for row in rows]
    assert run_metrics(run)["epochs"] == 2 and run_metrics(run)["n_parameters"] == rows[0]["n_parameters"]


def test_checkpoint_loads_with_timm_create_model(reference):
    out, rows = reference
    path = out / "checkpoint.pth"
    # The overlay's num_classes tells timm the file's head fits (else timm drops heads of other than 1000 classes).
    overlay = dict(file=str(path), num_classes=3)
    model = timm.create_model("repnext_m0", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3, **TINY)
    _assert_same_weights(model.state_dict(), _weights(path))
    assert rows[0]["n_parameters"] == sum(p.numel() for p in model.parameters())
    with pytest.raises(CheckpointError, match="shape mismatch"):
        timm.create_model("repnext_m0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          embed_dim=(8, 16, 32, 128), depth=(1, 1, 1, 1))  # fmt: skip


def test_seeded_runs_are_identical_and_the_seed_matters(folder, reference, tmp_path):
    out, _ = reference
    train(_config(folder, tmp_path / "again"))
    assert (tmp_path / "again" / "log.txt").read_bytes() == (out / "log.txt").read_bytes()
    _assert_same_weights(_weights(tmp_path / "again" / "checkpoint.pth"), _weights(out / "checkpoint.pth"))
    train(_config(folder, tmp_path / "log_only", checkpoints=False))
    assert [p.name for p in (tmp_path / "log_only").iterdir()] == ["log.txt"]
    assert (tmp_path / "log_only" / "log.txt").read_bytes() == (out / "log.txt").read_bytes()
    train(_config(folder, tmp_path / "weights_only", weights_only=True))
    assert sorted(p.name for p in (tmp_path / "weights_only").iterdir()) == ["best.pth", "log.txt"]
    assert (tmp_path / "weights_only" / "log.txt").read_bytes() == (out / "log.txt").read_bytes()
    small, full = _state(tmp_path / "weights_only" / "best.pth"), _state(out / "best.pth")
    assert small.keys() == full.keys() - {"optimizer", "lr_scheduler"} and small["epoch"] == full["epoch"]
    _assert_same_weights(small["model"], full["model"])
    other = train(_config(folder, tmp_path / "seed1", seed=1, epochs=1))
    assert other[0]["train_loss"] != json.loads((out / "log.txt").read_text().splitlines()[0])["train_loss"]


def test_interrupted_run_resumes_to_the_uninterrupted_result(folder, reference, tmp_path, monkeypatch, capsys):
    out, _ = reference
    evaluate, calls = train_module.evaluate, []

    def interrupt_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_config(folder, tmp_path / "run", checkpoint_dir=str(tmp_path / "ckpt")))
    assert "interrupted in epoch 1; resume with --resume" in capsys.readouterr().err
    assert _state(tmp_path / "ckpt" / "checkpoint.pth")["epoch"] == 0
    monkeypatch.setattr(train_module, "evaluate", evaluate)
    rows = train(_config(folder, tmp_path / "run", resume=str(tmp_path / "ckpt" / "checkpoint.pth")))
    assert [row["epoch"] for row in rows] == [0, 1]  # the epoch count continues; log.txt keeps epoch 0
    assert (tmp_path / "run" / "log.txt").read_bytes() == (out / "log.txt").read_bytes()
    _assert_same_weights(_weights(tmp_path / "run" / "checkpoint.pth"), _weights(out / "checkpoint.pth"))


# `repnext train` in a process that SIGKILLs itself after the second step of the second epoch (of two).
KILLED_MID_EPOCH = """import os, signal, sys
import repnext.train as train
from repnext.cli import main

steps = []
def bar(iterable, desc, progress):
    for item in iterable:
        yield item
        steps.append(desc)
        if steps.count("epoch 1/2") == 2:
            os.kill(os.getpid(), signal.SIGKILL)
train.bar = bar
main(sys.argv[1:])
"""


def _argv(folder, out, *more):
    return ["train", "repnext_m0", "--data", str(folder), "--out", str(out), "--epochs", "2", "--img-size", "32",
            "--batch-size", "4", "--warmup-epochs", "0", "--lr", "2e-3", "--threads", "1", "--no-progress",
            *more, "--model-kwargs", "embed_dim=8,16,32,64", "depth=1,1,1,1"]  # fmt: skip  # _config's run


def test_a_run_killed_mid_epoch_resumes_to_the_bytes_of_an_uninterrupted_run(folder, reference, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_EPOCH, *_argv(folder, out, "--checkpoint-dir", ckpt)],
                            env=env, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len((out / "log.txt").read_text().splitlines()) == 1 and _state(ckpt / "checkpoint.pth")["epoch"] == 0
    assert not [p.name for p in [*out.iterdir(), *ckpt.iterdir()] if p.suffix == ".tmp"]  # nothing half-written
    main(_argv(folder, out, "--resume", str(ckpt / "checkpoint.pth")))
    assert (out / "log.txt").read_bytes() == (reference[0] / "log.txt").read_bytes()
    _assert_same_weights(_weights(out / "checkpoint.pth"), _weights(reference[0] / "checkpoint.pth"))
    assert not (out / LOCK_NAME).exists()


def test_channels_last_trains_the_same_function_and_saves_nchw_weights(folder, reference, tmp_path):
    out, rows = reference
    nhwc = train(_config(folder, tmp_path, channels_last=True))
    # NHWC kernels sum in another order: rounding-level changes, which later steps of AdamW amplify.
    assert nhwc[0]["train_loss"] == pytest.approx(rows[0]["train_loss"], rel=1e-4)
    for ours, theirs in zip(nhwc, rows, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)
        assert ours["test_loss"] == pytest.approx(theirs["test_loss"], rel=1e-3)
    weights = _weights(tmp_path / "checkpoint.pth")
    assert any(value.dim() == 4 for value in weights.values())
    assert all(value.is_contiguous() for value in weights.values())  # the file's layout is not the training layout
    assert (out / "log.txt").read_bytes() != (tmp_path / "log.txt").read_bytes()  # the layout did change


def test_distributed_code_path_in_one_process(folder, reference, tmp_path):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        train(_config(folder, tmp_path))
    finally:
        dist.destroy_process_group()
    assert (tmp_path / "log.txt").read_bytes() == (reference[0] / "log.txt").read_bytes()


def test_bad_resume_and_options_fail_before_writing(folder, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        train(_config(folder, tmp_path / "a", resume=str(tmp_path / "missing.pth")))
    torch.save({"model": {}}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(_config(folder, tmp_path / "a", resume=str(tmp_path / "weights.pth")))
    with pytest.raises(ValueError, match=r"--batch-size: .* 12 training images, fewer than one batch of 16"):
        train(_config(folder, tmp_path / "a", batch_size=16))
    with pytest.raises(ValueError, match="--model-kwargs: repnext_m0 rejects"):
        train(_config(folder, tmp_path / "a", model_kwargs={"colour": 1}))
    with pytest.raises(ValueError, match="--epochs: must be a positive integer, got 0"):
        train(_config(folder, tmp_path / "a", epochs=0))
    with pytest.raises(ValueError, match="--warmup-lr: must be non-negative, got -1"):
        train(_config(folder, tmp_path / "a", warmup_lr=-1.0))
    assert not (tmp_path / "a").exists()


def test_a_second_run_on_the_same_out_folder_refuses_at_once(folder, tmp_path, capsys):
    out = tmp_path / "run"
    with exclusive_out(out):
        with pytest.raises(SystemExit) as raised:
            main(["train", "repnext_m0", "--data", str(folder), "--out", str(out), "--epochs", "1"])
        assert str(raised.value) == (f"repnext train: --out {out}: another run is training there (pid {os.getpid()}); "
                                     "wait for it or choose another --out")  # fmt: skip
    assert not out.exists(), "the lock leaves nothing behind"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: None, None),
        (lambda root: (root / "val").rename(root / "valid"), "val: missing split folder"),
        (lambda root: [p.unlink() for p in (root / "val" / "red").iterdir()], "val/red: empty class"),
        (lambda root: (root / "train" / "red" / "0.png").write_bytes(b"\x89PNG broken"), "train/red/0.png: corrupt"),
        (lambda root: (root / "val" / "green").rename(root / "val" / "grey"), "train and val have different classes"),
    ],
    ids=["valid", "missing-split", "empty-class", "corrupt-image", "class-mismatch"],
)
def test_check_image_folder_errors_name_the_path(tmp_path, damage, message):
    root = _write_folder(tmp_path / "data", train_per_class=1, val_per_class=1, size=8)
    damage(root)
    if message is None:
        assert check_image_folder(root) == {split: dict.fromkeys(CLASSES, 1) for split in ("train", "val")}
        return
    with pytest.raises(DatasetError, match=message):
        check_image_folder(root)
    with pytest.raises(DatasetError, match=message):
        train(_config(root, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_folder_without_class_folders(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "stray.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="train: no class folders"):
        check_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="no such directory"):
        check_image_folder(tmp_path / "absent")


def test_materialized_photos_are_byte_identical_and_match_the_builtin(tmp_path):
    first = materialize_dataset("builtin:photos", tmp_path / "a", size=16, train_per_class=2, val_per_class=1)
    second = materialize_dataset("builtin:photos", tmp_path / "b", size=16, train_per_class=2, val_per_class=1)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 3 * len(PHOTOS) and files[0].as_posix() == "train/astronaut/0000.png"
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert check_image_folder(first)["val"] == dict.fromkeys(PHOTOS, 1)
    crops = photo_crops("train", 2, size=16)
    assert np.array_equal(np.asarray(Image.open(first / "train" / "cat" / "0001.png")), np.asarray(crops.images[3]))
    assert crops.targets[3] == crops.classes.index("cat")
    materialize_dataset("builtin:photos", first, size=16, train_per_class=1, val_per_class=1)  # replaces the tree
    assert len(list(first.rglob("*.png"))) == 2 * len(PHOTOS)
    with pytest.raises(DatasetError, match="unknown built-in dataset 'imagenet'"):
        materialize_dataset("builtin:imagenet", tmp_path / "c")


def test_crops_stay_in_their_split_region():
    photo = Image.new("RGB", (300, 200))
    for split in ("train", "val"):
        rng = np.random.default_rng(0)
        boxes = np.array([_crop_box(rng, photo, split) for _ in range(200)])
        inside = (boxes[:, 0] >= 0) & (boxes[:, 2] <= TRAIN_FRACTION * 300) if split == "train" else boxes[:, 0] >= 210
        assert inside.all() and (boxes[:, 3] <= 200).all() and (boxes[:, 1] >= 0).all()


def test_command_line_options_and_model_kwargs():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["recnext_m0", "--data", "builtin:photos", "--out", "logs/x", "--epochs", "3",
                              "--model-kwargs", "mode=nearest", "levels=0,0,0,0", "--no-amp",
                              "--no-checkpoints"])  # fmt: skip
    config = config_from_args(args)
    assert (config.model, config.data, config.epochs, config.amp) == ("recnext_m0", "builtin:photos", 3, False)
    assert not config.checkpoints
    assert config_from_args(parser.parse_args(["m", "--data", "d", "--out", "o"])).checkpoints
    assert config.model_kwargs == {"mode": "nearest", "levels": (0, 0, 0, 0)}
    assert parse_model_kwargs(["single_branch=True", "kernel_size=7"]) == {"single_branch": True, "kernel_size": 7}
    with pytest.raises(ValueError, match="--model-kwargs: expected KEY=VALUE, got 'nearest'"):
        parse_model_kwargs(["nearest"])


def _experiments_params(tmp_path, experiments: dict, **training) -> str:
    settings = dict(epochs=2, img_size=32, batch_size=4, warmup_epochs=0, lr=2e-3, threads=1)
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"training": {**settings, **training}, "experiments": experiments}))  # JSON is YAML
    return str(path)


def test_experiments_side_by_side_give_the_bytes_of_runs_alone(folder, reference, tmp_path):
    tiny = "embed_dim=8,16,32,64 depth=1,1,1,1"
    experiments = {"alone": {"model": "repnext_m0", "model_kwargs": tiny},
                   "single": {"model": "repnext_m0", "model_kwargs": f"{tiny} single_branch=True"}}  # fmt: skip
    params = _experiments_params(tmp_path, experiments)
    main(["train-experiments", "experiments", "--params", params, "--data", str(folder), "--out",
          str(tmp_path / "logs"), "--checkpoint-root", str(tmp_path / "ckpt"), "--jobs", "2"])  # fmt: skip
    out, _ = reference
    assert (tmp_path / "logs" / "alone" / "log.txt").read_bytes() == (out / "log.txt").read_bytes()
    _assert_same_weights(_weights(tmp_path / "ckpt" / "alone" / "checkpoint.pth"), _weights(out / "checkpoint.pth"))
    assert (tmp_path / "logs" / "single" / "log.txt").read_bytes() != (out / "log.txt").read_bytes()
    assert sorted(p.name for p in (tmp_path / "ckpt" / "single").iterdir()) == ["best.pth", "checkpoint.pth"]


def test_training_switches_become_flags_only_when_they_change_the_default():
    one = {"x": {"model": "repnext_m0"}}
    argv = train_commands(one, {"epochs": 2, "channels_last": True, "amp": True}, "d", "o")["x"]
    assert argv[argv.index("--epochs") + 1] == "2" and "--channels-last" in argv and "--no-amp" not in argv
    assert "--no-amp" in train_commands(one, {"amp": False}, "d", "o")["x"]
    with_weights = train_commands(one, {}, "d", "o", "ckpt", weights_only=True)["x"]
    assert with_weights[with_weights.index("--checkpoint-dir") + 1] == "ckpt/x" and "--weights-only" in with_weights
    assert "--weights-only" not in train_commands(one, {}, "d", "o", weights_only=True)["x"]  # no checkpoints at all
    with pytest.raises(ExperimentError, match=r"^params\.yaml: training\.channels_last: expected true or false, got 1"):
        train_commands(one, {"channels_last": 1}, "d", "o")
    with pytest.raises(ExperimentError, match=r"training\.progress: not an option of repnext train"):
        train_commands(one, {"progress": True}, "d", "o")


def test_bad_experiments_fail_with_one_line_and_leave_nothing(folder, tmp_path):
    params = _experiments_params(tmp_path, {"x": {"model": "repnext_m0"}}, epoch=3)
    with pytest.raises(SystemExit, match=r"^repnext train-experiments: .*params\.yaml: training\.epoch: not an option"):
        main(["train-experiments", "experiments", "--params", params, "--data", str(folder), "--out", str(tmp_path)])
    params = _experiments_params(tmp_path, {"x": {"model": "repnext_m0", "model_kwarg": "depth=1,1,1,1"}})
    with pytest.raises(SystemExit, match=r"params\.yaml: x\.model_kwarg: unknown key \(expected model, model_kwargs\)"):
        main(["train-experiments", "experiments", "--params", params, "--data", str(folder), "--out", str(tmp_path)])
    params = _experiments_params(tmp_path, {"broken": {"model": "repnext_m0", "model_kwargs": "nope=1"}})
    with pytest.raises(SystemExit) as raised:
        main(["train-experiments", "experiments", "--params", params, "--data", str(folder), "--out",
              str(tmp_path / "logs")])  # fmt: skip
    message = str(raised.value)
    assert (
        message.startswith("repnext train-experiments: broken: repnext train exited with status 1: ")
        and "nope" in message
    )
    assert "\n" not in message and not (tmp_path / "logs" / "broken").exists()

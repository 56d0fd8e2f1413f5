"""``repnext train-experiments``: every run of one ``params.yaml`` section, side by side.

Each experiment ``NAME: {model: VARIANT, model_kwargs: "KEY=VALUE ..."}`` becomes one ``repnext train``
process with the shared options of the ``training`` section (``img_size: 64`` -> ``--img-size 64``),
writing ``OUT/NAME/log.txt`` (and, with a checkpoint root, ``ROOT/NAME/best.pth``). Up to ``jobs`` of them
run at once. A run has its own process and a fixed thread count, so it computes exactly what it computes
alone: logs and checkpoints are the same bytes whatever ``jobs`` is. If a run fails, the others are
stopped and the outputs of every run that did not finish are removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ExperimentError", "default_jobs", "run_experiments", "shared_options", "train_commands"]


class ExperimentError(RuntimeError):
    """A bad experiment definition or a failed run; the message is one line."""


def shared_options() -> dict[str, object]:
    """``repnext train`` options a ``training`` section may set, with their defaults: all but the per-run ones."""
    from dataclasses import fields

    from .train import TrainConfig

    per_run = {"model", "data", "out", "checkpoint_dir", "model_kwargs", "resume", "checkpoints", "weights_only",
               "progress"}  # fmt: skip
    default = TrainConfig("", "", "")
    return {f.name: getattr(default, f.name) for f in fields(TrainConfig) if f.name not in per_run}


def _argv(key: str, value: object, default: object, where: str) -> list[str]:
    """``img_size: 64`` -> ``["--img-size", "64"]``; a switch (``channels_last: true``) -> its flag, or nothing."""
    from .train import SWITCHES, option_name

    if key not in SWITCHES:
        return [option_name(key), str(value)]
    if not isinstance(value, bool):
        raise ExperimentError(f"{where}: training.{key}: expected true or false, got {value!r}")
    return [SWITCHES[key][0]] if value != default else []


def train_commands(
    experiments: Mapping[str, Mapping],
    training: Mapping[str, object],
    data: str,
    out: str | os.PathLike,
    checkpoint_root: str | os.PathLike | None = None,
    where: str = "params.yaml",
    weights_only: bool = False,
) -> dict[str, list[str]]:
    """One ``repnext train`` argv per experiment; errors name the parameter (``where: section.NAME.key``).
    With ``checkpoint_root``, each run writes ``ROOT/NAME/best.pth`` (model only with ``weights_only``)."""
    options, shared = shared_options(), []
    for key, value in training.items():
        if key not in options:
            raise ExperimentError(
                f"{where}: training.{key}: not an option of repnext train ({', '.join(sorted(options))})"
            )
        shared += _argv(key, value, options[key], where)
    commands = {}
    for name, item in experiments.items():
        if not isinstance(item, Mapping) or not isinstance(item.get("model"), str):
            raise ExperimentError(f"{where}: {name}: expected {{model: VARIANT, model_kwargs: 'KEY=VALUE ...'}}")
        unknown = sorted(set(item) - {"model", "model_kwargs"})
        if unknown:
            raise ExperimentError(f"{where}: {name}.{unknown[0]}: unknown key (expected model, model_kwargs)")
        argv = [sys.executable, "-m", "repnext", "train", item["model"], "--data", data, "--out", f"{out}/{name}"]
        argv += ["--checkpoint-dir", f"{checkpoint_root}/{name}"] if checkpoint_root else ["--no-checkpoints"]
        argv += ["--weights-only"] if checkpoint_root and weights_only else []
        commands[name] = [*argv, *shared, "--no-progress", "--model-kwargs", *str(item.get("model_kwargs", "")).split()]
    return commands


def _relay(name: str, stream, tail: deque) -> None:
    """Print a run's output line by line, prefixed with its name, keeping its last lines for the error."""
    for line in stream:
        tail.append(line.rstrip())
        print(f"[{name}] {line}", end="", flush=True)


def default_jobs(training: Mapping[str, object]) -> int:
    """CPU cores over the runs' thread count: every core busy, none shared by two runs."""
    return max(1, (os.cpu_count() or 1) // int(training.get("threads") or 1))


def run_experiments(
    commands: Mapping[str, list[str]],
    jobs: int,
    out: str | os.PathLike,
    checkpoint_root: str | os.PathLike | None = None,
) -> None:
    """Run ``commands`` (name -> argv), at most ``jobs`` at a time. On a failure, stop the others, remove
    ``OUT/NAME`` (and ``ROOT/NAME``) of every run that did not finish and raise :class:`ExperimentError`."""
    if jobs < 1:
        raise ExperimentError(f"--jobs: must be a positive integer, got {jobs}")
    roots = [Path(out)] + ([Path(checkpoint_root)] if checkpoint_root else [])
    pending, running, finished = deque(commands), {}, set()
    failure = None
    try:
        while (pending or running) and failure is None:
            while pending and len(running) < jobs:
                name = pending.popleft()
                process = subprocess.Popen(commands[name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                tail: deque = deque(maxlen=5)
                relay = threading.Thread(target=_relay, args=(name, process.stdout, tail), daemon=True)
                relay.start()
                running[name] = (process, relay, tail)
            done, status = _wait_any(running)
            process, relay, tail = running.pop(done)
            relay.join()
            if status != 0:
                last = next((line for line in reversed(tail) if line.strip()), "no output")
                failure = f"{done}: repnext train exited with status {status}: {last}"
            else:
                finished.add(done)
    finally:
        for process, relay, _ in running.values():
            process.terminate()
            process.wait()
            relay.join()
        if failure is not None or running:
            for name in commands:
                if name not in finished:
                    for root in roots:
                        shutil.rmtree(root / name, ignore_errors=True)
    if failure is not None:
        raise ExperimentError(failure)


def _wait_any(running: Mapping[str, tuple]) -> tuple[str, int]:
    """The name and exit status of the next run to end (polled: other children of this process stay unreaped)."""
    while True:
        for name, (process, _, _) in running.items():
            if process.poll() is not None:
                return name, process.returncode
        time.sleep(0.2)

"""Leave-one-take-out cross-validation, end to end on three short synthetic takes
with a model small enough to train in seconds: every fold trains, exports and is
evaluated; a rerun skips the finished folds; bad input is one clear line."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from tests.conftest import one_line_error
from tests.test_evaluate import write_demo_take
from train_host import evaluate as ev
from train_host.crossval import CrossvalError
from train_host.evaluate import TAKE_COLUMNS as COLUMNS

pytestmark = pytest.mark.slow

TINY = """\
model: {hidden_units: 32, latent_size: 8}
training: {epochs: 5, batch_size: 16}
data: {validation_fraction: 0.0}
export: {representative_windows: 100}
"""


@pytest.fixture(scope="module")
def takes(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossval")
    for seed in (21, 22, 23):
        write_demo_take(root / "takes", 3.0, seed=seed)
    (root / "tiny.yaml").write_text(TINY)
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    """``python -m train_host crossval …`` in this process, through ``add_commands``."""
    import argparse

    from train_host.crossval import add_commands

    parser = argparse.ArgumentParser(prog="python -m train_host")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_take_is_held_out_once_and_finished_folds_are_skipped(takes, capsys, caplog):
    out = takes / "folds"
    argv = ["crossval", str(takes / "takes"), "--config", str(takes / "tiny.yaml"),
            "--out", str(out), "--cache", "none"]
    code, stdout, _ = run(capsys, *argv, "--json")
    assert code == 0
    result = json.loads(stdout)
    names = sorted(p.name for p in (takes / "takes").iterdir())
    assert [fold["take"] for fold in result["folds"]] == names
    for fold in result["folds"]:
        # Trained without the held-out take, evaluated on it alone.
        assert fold["take"] not in " ".join(fold["train_takes"])
        assert len(fold["train_takes"]) == 2
        assert list(fold["metrics"]) == list(ev.SYSTEMS)
        for system, values in fold["metrics"].items():
            assert sorted(values) == sorted(ev.METRICS)
            assert all(v is None or math.isfinite(v) for v in values.values())
        assert [s["take"] for s in fold["scores"]] == [fold["take"]]
    folders = sorted(out.iterdir())
    assert len(folders) == 3
    for folder in folders:
        assert (folder / "result.json").exists() and (folder / "model.dsb").exists()
        assert (folder / "run" / "run.json").exists()
    # The pooled log-mel distance is the mean over every segment of every take.
    segments = [fold["scores"][0]["segments"] for fold in result["folds"]]
    distances = [fold["scores"][0]["metrics"]["model"]["log_mel_distance_db"]
                 for fold in result["folds"]]
    assert result["pooled"]["metrics"]["model"]["log_mel_distance_db"] == \
        pytest.approx(np.average(distances, weights=segments), abs=1e-4)

    # Rerun, the takes' folder moved as a whole: every fold is read back, none
    # trains again (the results stay as they were).
    stamps = {f: (f / "result.json").stat().st_mtime_ns for f in folders}
    caplog.clear()
    caplog.set_level("INFO", logger="train_host")
    shutil.copytree(takes / "takes", takes / "moved")
    argv[1] = str(takes / "moved")
    code, stdout, _ = run(capsys, *argv)
    assert code == 0
    assert {f: (f / "result.json").stat().st_mtime_ns for f in folders} == stamps
    assert sum("already done" in r.getMessage() for r in caplog.records) == 3
    assert not any(r.name == "train_host.train" for r in caplog.records)
    lines = stdout.splitlines()
    assert lines[0].split() == ["take", *[heading for heading, _, _ in COLUMNS]]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:4] + lines[4:5]}
    assert set(rows) == set(names) | {"pooled"}
    pooled_model = float(rows["pooled"][0])
    assert pooled_model == pytest.approx(
        result["pooled"]["metrics"]["model"]["log_mel_distance_db"], abs=0.01)

    # Other takes: the first fold was trained on two, now there would be one.
    fewer = takes / "fewer"
    for take in sorted((takes / "takes").iterdir())[:2]:
        shutil.copytree(take, fewer / take.name)
    argv[1] = str(fewer)
    with pytest.raises(CrossvalError, match="01-.*made with another config or other takes"):
        run(capsys, *argv)


def test_the_model_fine_tuned_from_is_known_by_its_weights_not_its_path(tmp_path):
    """A run rebuilt in the same folder must not resume folds made from the old
    weights; the same weights elsewhere must."""
    import keras

    from train_host import vae as vae_mod
    from train_host.crossval import weights_digest
    from train_host.train import Run

    keras.utils.set_random_seed(1)
    vae = vae_mod.build(window_frames=8, features=4, segment_samples=64, hop_samples=32,
                        latent_size=2, hidden_units=8, input_scale=1.0)
    here = Run(tmp_path / "a", None, vae, {"input_scale": 1.0})
    moved = Run(tmp_path / "b", None, vae, {"input_scale": 1.0})
    assert weights_digest(here) == weights_digest(moved)
    before = weights_digest(here)
    part = vae.parts["motion_encoder"]
    weights = part.get_weights()
    weights[0] = weights[0] + np.float32(1e-3)
    part.set_weights(weights)
    assert weights_digest(here) != before
    assert weights_digest(Run(here.path, None, vae, {"input_scale": 2.0})) != \
        weights_digest(here)


def test_bad_input_is_one_line(takes, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    def crossval(*argv):
        return subprocess.run([sys.executable, "-m", "train_host", "crossval", *argv,
                               "--config", str(takes / "tiny.yaml"), "--cache", "none",
                               "--out", str(tmp_path / "out")],
                              cwd=ROOT, capture_output=True, text=True)

    one = sorted((takes / "takes").iterdir())[0]
    one_line_error(crossval(str(one)), "at least 2 takes", "found 1")
    one_line_error(crossval(str(tmp_path / "missing")), "no such folder")
    short = write_demo_take(tmp_path / "short", 0.2, seed=30)
    one_line_error(crossval(str(one), str(short)), short.name, "0.20 s is too short")

"""Malformed takes from elsewhere (pulled or copied) are refused in one line or
read as far as they go: no traceback, hang or runaway memory, through the listing,
the reader and the dataset builder."""

import io
import logging
import random
import shutil

import numpy as np
import yaml

from device.errors import DanceSamplerError
from device.session import (AUDIO_FILE, FRAMES_FILE, INFO_FILE, TIMES_FILE, read_session,
                            sessions_command)
from tests.test_dataset import config, write_take
from train_host import dataset

_WRONG = (None, True, "x", -1, 0, 1e-9, 1e308, float("nan"), [], {}, [[[[]]]], "9" * 300)


def _mutations(good, rng):
    """(what, change), where change edits a copy of the take in place."""
    info = yaml.safe_load((good / INFO_FILE).read_text())
    for key in info:
        for value in _WRONG:
            def change(path, key=key, value=value):
                data = yaml.safe_load((path / INFO_FILE).read_text())
                data[key] = value
                (path / INFO_FILE).write_text(yaml.safe_dump(data))
            yield f"{key} = {value!r:.20}", change
    for name in (FRAMES_FILE, TIMES_FILE, AUDIO_FILE, INFO_FILE):
        for _ in range(6):
            def cut(path, name=name, at=rng.random()):
                data = (path / name).read_bytes()
                (path / name).write_bytes(data[:int(len(data) * at)])
            yield f"{name} cut short", cut

            def flip(path, name=name, seed=rng.randrange(1 << 30)):
                data = bytearray((path / name).read_bytes())
                local = random.Random(seed)
                for _ in range(local.choice((1, 16, 256))):
                    if data:
                        data[local.randrange(len(data))] ^= 1 << local.randrange(8)
                (path / name).write_bytes(bytes(data))
            yield f"{name} bits flipped", flip

    def times(path, values=(np.inf, -1e12, 3e13)):
        t = np.fromfile(path / TIMES_FILE, "<f8")
        t[len(t) // 2] = rng.choice(values)
        t.astype("<f8").tofile(path / TIMES_FILE)
    for _ in range(6):
        yield "a timestamp absurd", times


def test_generated_malformed_takes_are_refused_in_one_line_or_read(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    good = write_take(tmp_path / "source", fps=30, seconds=2.0)
    cfg = config(data__fps=30)
    tried = refused = 0
    for i, (what, change) in enumerate(_mutations(good, random.Random(5))):
        root = tmp_path / f"case{i}"
        path = root / good.name
        shutil.copytree(good, path)
        change(path)
        tried += 1
        out = io.StringIO()
        assert sessions_command(root, as_json=True, out=out) == 0, what
        assert len(out.getvalue()) < 20_000, what
        try:
            read_session(path)
            prepared = dataset.prepare_take(path, cfg)
            assert len(prepared.motion) < 10 * 30, what       # a 2 s take stays small
        except DanceSamplerError as exc:
            refused += 1
            assert "\n" not in str(exc) and str(path) in str(exc), (what, str(exc))
        shutil.rmtree(root)
    assert tried > 150 and refused > tried // 3, (tried, refused)

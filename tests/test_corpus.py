"""The corpus voice: takes cut into grains, chosen live by motion, built on the box.

Takes are the synthetic demo dancer and the sound its dance drives, recorded as the
box records them (``tests.test_evaluate.write_demo_take``); the voice plays through
the box's own engine and is read by the box's own bundle reader.
"""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from device.bundle import read_bundle, write_bundle
from device.config import CorpusConfig
from device.corpus import (INDEX, CorpusError, CorpusVoice, VoiceShape,
                           corpus_from_takes)
from device.errors import BundleError
from device.motiongram import MotionGain
from device.session import SessionWriter, read_session
from device.timeline import take_timeline, window_ends, windows_at
from tests.conftest import ROOT, one_line_error
from tests.test_control import ctl, pins, show  # noqa: F401 - fixtures
from tests.test_evaluate import write_demo_take


@pytest.fixture(scope="module")
def takes(tmp_path_factory):
    root = tmp_path_factory.mktemp("takes")
    return [write_demo_take(root, 12.0, seed=seed) for seed in (3, 4)]


@pytest.fixture
def shape(default_bundle) -> VoiceShape:
    return VoiceShape.of(read_bundle(default_bundle).manifest)


@pytest.fixture
def voice(takes, shape, tmp_path) -> Path:
    return corpus_from_takes(takes, shape, CorpusConfig(), name="voice", out=tmp_path / "v.dsb")


def own_windows(take: Path, shape: VoiceShape) -> np.ndarray:
    """The take's motion windows, gained, as the box hears that dance live."""
    motion, audio, _ = take_timeline(read_session(take), fps=shape.fps,
                                     sample_rate=shape.audio.sample_rate,
                                     motiongram=shape.motiongram)
    gained = MotionGain(shape.motion_gain, shape.motiongram, fps=shape.fps).apply(motion)
    ends = window_ends(len(motion), len(audio), window_frames=shape.window_frames,
                       segment_samples=shape.audio.segment_samples,
                       hop_samples=shape.audio.hop_samples)
    return windows_at(gained, ends, shape.window_frames)


def test_the_voice_is_a_version_4_bundle_that_says_how_it_was_made(voice, takes):
    bundle = read_bundle(voice)
    m = bundle.manifest
    assert m.format_version == 4 and m.voice == "corpus" and bundle.is_corpus
    c = m.corpus
    assert [t["name"] for t in c["takes"]] == [t.name for t in takes]
    assert c["grains"] == sum(t["grains"] for t in c["takes"])
    assert c["sample_format"] == "int16" and c["dims"] == 24 and c["continuity"] == 0.5
    assert m.training["data"]["takes"] == [str(t) for t in takes]
    assert "voice       corpus: " in m.describe()
    # Built twice from the same takes: the same bytes.
    again = corpus_from_takes(takes, VoiceShape.of(m), CorpusConfig(), name="voice",
                              out=voice.with_name("again.dsb"))
    assert again.read_bytes() == voice.read_bytes()


def test_the_recorded_dance_plays_back_its_own_recording(voice, takes, shape):
    """Danced again as recorded, the voice mostly follows the recording grain by
    grain (so the overlap-add plays it back unchanged), jumping only at the dance's
    stops (motion beats) and where another moment is much nearer."""
    played = CorpusVoice(read_bundle(voice))
    windows = own_windows(takes[0], shape)
    chosen = []
    for window in windows:
        played(window)
        chosen.append(played.chosen)
    # The first take's grains are the voice's first, in the order of its frames.
    own = np.mean(np.asarray(chosen) == np.arange(len(windows)))
    print(f"own grain in {own:.0%} of frames, jumps in {played.jumps / played.frames:.0%}")
    assert own > 0.6
    assert played.frames == len(windows) and played.jumps / played.frames < 0.35


def test_stillness_is_quiet_and_motion_is_heard(voice, shape):
    played = CorpusVoice(read_bundle(voice))
    still = np.zeros((shape.window_frames, shape.motiongram.features), np.float32)
    assert not played(still).any()
    moving = np.full_like(still, 0.02)
    segment = played(moving)
    assert segment.shape == (shape.audio.segment_samples,) and np.isfinite(segment).all()
    assert 20 * np.log10(np.sqrt(np.mean(segment ** 2))) > -40


def test_leveling_brings_grains_to_the_takes_level(takes, shape, tmp_path):
    windows = own_windows(takes[0], shape)

    def levels(leveling):
        played = CorpusVoice(read_bundle(corpus_from_takes(
            takes, shape, CorpusConfig(leveling=leveling), name="v",
            out=tmp_path / f"l{leveling}.dsb")))
        out = np.stack([played(w) for w in windows])
        db = 10 * np.log10(np.maximum((out ** 2).mean(axis=1), 1e-12))
        return db[db > -60]

    def spread(db):   # median distance from the median level (what loud frames do)
        return np.median(np.abs(db - np.median(db)))

    leveled, recorded = levels(1.0), levels(0.0)
    assert spread(recorded) > 1.0 and spread(leveled) < 0.25 * spread(recorded)


def test_the_engine_plays_a_corpus_voice_and_crossfades_to_a_model(voice, default_bundle):
    from device.engine import Engine

    engine = Engine(read_bundle(voice))
    rng = np.random.default_rng(0)
    frames = [np.zeros((48, 64), np.uint8)]
    for _ in range(89):
        image = np.full((48, 64), 40, np.uint8)
        x, y = rng.integers(0, 56), rng.integers(0, 40)
        image[y:y + 8, x:x + 8] = 220
        frames.append(image)
    hops = [engine.step(f).copy() for f in frames[:45]]
    engine.swap(engine.prepare(read_bundle(default_bundle)))
    hops += [engine.step(f).copy() for f in frames[45:]]
    audio = np.concatenate(hops)
    assert np.isfinite(audio).all() and np.abs(audio[-30 * 735:]).max() > 0
    assert engine.bundle.manifest.voice == "model"


def test_takes_too_short_or_silent_make_no_voice_and_nothing_is_overwritten(tmp_path, shape,
                                                                            voice):
    short = write_demo_take(tmp_path / "short", 3.0, seed=5)
    with pytest.raises(CorpusError, match=r"demo5: 2\.7 s of dance with sound is too short "
                                          r"for a voice \(at least 5 s, corpus.min_seconds\)"):
        corpus_from_takes([short], shape, CorpusConfig(), name="v", out=tmp_path / "s.dsb")
    silent = _silent_take(tmp_path / "silent", seconds=8.0)
    with pytest.raises(CorpusError, match=r"the sound is silent"):
        corpus_from_takes([silent], shape, CorpusConfig(), name="v", out=tmp_path / "q.dsb")
    assert not (tmp_path / "s.dsb").exists() and not (tmp_path / "q.dsb").exists()
    before = voice.read_bytes()
    with pytest.raises(CorpusError, match=r"v.dsb: already exists"):
        corpus_from_takes([short], shape, CorpusConfig(), name="v", out=voice)
    assert voice.read_bytes() == before


def _silent_take(root: Path, seconds: float) -> Path:
    writer = SessionWriter(root, label="silent", fps=30, sample_rate=22050, audio_source="test",
                           min_free_bytes=0)
    rng = np.random.default_rng(1)
    for i in range(round(seconds * 30)):
        image = np.full((48, 64), 40, np.uint8)
        image[rng.integers(0, 40):, rng.integers(0, 56):][:8, :8] = 220
        writer.add_frame(image, i / 30)
    writer.add_audio(np.zeros(round(seconds * 22050), np.float32))
    writer.close()
    return writer.path


def test_a_damaged_corpus_is_refused_in_one_line(voice, tmp_path):
    bundle = read_bundle(voice)
    members = dict(bundle.graphs)
    import io

    index = np.load(io.BytesIO(members[INDEX]))
    buffer = io.BytesIO()
    np.save(buffer, index[:, :5])
    members[INDEX] = buffer.getvalue()
    bad = write_bundle(tmp_path / "bad.dsb", bundle.manifest, members)
    with pytest.raises(BundleError, match=r"bad.dsb: corpus_index.npy is float32 \[\d+, 5\]; "
                                          r"expected float32 \[\d+, 24\]"):
        CorpusVoice(read_bundle(bad))
    wrong = dataclasses.replace(bundle.manifest, corpus={**bundle.manifest.corpus,
                                                         "sample_format": "flac"})
    with pytest.raises(BundleError, match=r"w.dsb: malformed corpus \(sample_format is 'flac'"):
        CorpusVoice(read_bundle(write_bundle(tmp_path / "w.dsb", wrong, bundle.graphs)))
    no_corpus = dataclasses.replace(bundle.manifest, corpus=None)
    with pytest.raises(BundleError, match=r"n.dsb: manifest corpus is None; expected an object"):
        read_bundle(write_bundle(tmp_path / "n.dsb", no_corpus, bundle.graphs))


def test_fine_tuning_from_a_corpus_voice_is_refused_in_one_line(voice, tmp_path):
    from train_host.train import find_run

    with pytest.raises(BundleError, match=r"v\.dsb: a corpus voice was never trained, so "
                                          "nothing can be fine-tuned from it"):
        find_run(voice, runs=tmp_path)


def test_device_corpus_command_and_check_bundle(takes, tmp_path, default_bundle):
    out = tmp_path / "cli.dsb"
    made = subprocess.run([sys.executable, "-m", "device", "corpus", *map(str, takes),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    assert f"wrote {out}" in made.stdout
    checked = subprocess.run([sys.executable, "-m", "device", "check-bundle", str(out)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert "voice       corpus: " in checked.stdout and "in corpus gave 2205 samples" in \
        checked.stdout
    again = subprocess.run([sys.executable, "-m", "device", "corpus", str(takes[0]),
                            "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    one_line_error(again, str(out), "already exists")


def test_evaluate_scores_a_corpus_voice_like_a_model(voice, takes, tmp_path):
    from train_host.evaluate import run_evaluation

    held_out = write_demo_take(tmp_path / "eval", 6.0, seed=9)
    evaluation = run_evaluation(voice, [held_out], takes, keep_excerpt=False)
    corpus = evaluation.metrics["model"]
    assert corpus["frechet_log_mel"] is not None and corpus["log_mel_distance_db"] > 0
    assert corpus["beat_align"] is not None


def test_ctl_builds_a_voice_from_the_take_just_recorded_and_plays_it(show):  # noqa: F811
    performance, path, recorder = show
    assert ctl("record", "--socket", str(path)).returncode == 0
    time.sleep(6.5)
    assert ctl("stop", "--socket", str(path)).returncode == 0
    recorder.wait()
    made = ctl("voice-from-last-take", "--socket", str(path), "--json")
    assert made.returncode == 0, made.stderr
    take = recorder.root / sorted(p.name for p in recorder.root.iterdir())[-1]
    assert json.loads(made.stdout)["note"] == f"building a voice from {take.name}"
    deadline = time.monotonic() + 30
    while performance.engine.bundle.manifest.voice != "corpus":
        assert time.monotonic() < deadline, "the voice never played"
        time.sleep(0.05)
    models = Path(performance.cfg.model.models_dir)
    assert (models / f"voice-{take.name}.dsb").is_file()
    status = ctl("status", "--socket", str(path), "--json")
    reply = json.loads(status.stdout)
    assert reply["voice"] == "corpus" and "(corpus voice, 30 fps" in reply["status"]
    assert take.is_dir()   # the take itself is untouched


def test_host_corpus_command_and_leave_one_take_out_with_corpus_voices(takes, tmp_path,
                                                                        capsys):
    import argparse

    from train_host.corpus import add_commands as add_corpus
    from train_host.crossval import add_commands as add_crossval

    parser = argparse.ArgumentParser(prog="python -m train_host")
    commands = parser.add_subparsers(dest="command", required=True)
    add_corpus(commands)
    add_crossval(commands)

    def run(*argv):
        args = parser.parse_args(list(argv))
        return args.func(args), capsys.readouterr().out

    out = tmp_path / "host.dsb"
    code, printed = run("corpus", *map(str, takes), "--out", str(out), "--cache", "none",
                        "--sample-format", "mulaw")
    assert code == 0 and f"wrote {out}" in printed
    corpus = read_bundle(out).manifest.corpus
    assert corpus["sample_format"] == "mulaw" and len(corpus["takes"]) == 2

    import shutil

    root = tmp_path / "takes"
    for take in takes:
        shutil.copytree(take, root / take.name)
    write_demo_take(root, 8.0, seed=6)
    code, printed = run("crossval", str(root), "--voice", "corpus",
                        "--out", str(tmp_path / "folds"), "--cache", "none", "--json")
    assert code == 0
    result = json.loads(printed)
    assert len(result["folds"]) == 3 and "-corpus-" in result["name"]
    for fold in result["folds"]:
        bundle = read_bundle(next((tmp_path / "folds").glob(f"*-{fold['take']}")) / "model.dsb")
        assert bundle.is_corpus and fold["take"] not in [
            t["name"] for t in bundle.manifest.corpus["takes"]]
        assert fold["metrics"]["model"]["frechet_log_mel"] is not None


def test_damaged_voices_are_refused_in_one_line_or_play_never_crash(voice, tmp_path):
    """Bit flips and cuts in each array (checksums recomputed, so they reach the
    voice) and every corpus field given a wrong value: refused, or still playing
    finite segments of the right size; numpy warns of nothing."""
    import warnings

    from device.corpus import MEMBERS

    bundle = read_bundle(voice)
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "played": 0}
    for case in range(90):
        members, manifest = dict(bundle.graphs), bundle.manifest
        name = MEMBERS[case % len(MEMBERS)]
        if case % 3 == 0:
            data = bytearray(members[name])
            for _ in range(rng.integers(1, 20)):
                i = rng.integers(min(len(data), 200) if rng.random() < 0.5 else len(data))
                data[i] ^= 1 << rng.integers(8)
            members[name] = bytes(data)
        elif case % 3 == 1:
            members[name] = members[name][:rng.integers(len(members[name]))]
        else:
            key = sorted(manifest.corpus)[case % len(manifest.corpus)]
            wrong = [None, "x", -1, 0, 1e30, [], {}, True, 2**40][case % 9]
            manifest = dataclasses.replace(manifest, corpus={**manifest.corpus, key: wrong})
        path = write_bundle(tmp_path / f"{case}.dsb", manifest, members)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                played = CorpusVoice(read_bundle(path))
            except BundleError as exc:
                assert str(path) in str(exc) and "\n" not in str(exc)
                outcomes["refused"] += 1
                continue
            window = np.abs(rng.normal(0, 0.02, (8, 112))).astype(np.float32)
            segment = played(window)
        assert segment.shape == (2205,) and np.isfinite(segment).all()
        outcomes["played"] += 1
    print(outcomes)
    assert outcomes["refused"] > 60


def test_a_build_in_a_child_process_reports_back_in_one_line(takes, shape, tmp_path):
    from device.corpus import build_in_child

    made = build_in_child(takes[:1], shape, CorpusConfig(), name="child", out=tmp_path / "c.dsb")
    assert read_bundle(made).manifest.corpus["takes"][0]["name"] == takes[0].name
    silent = _silent_take(tmp_path / "silent", seconds=8.0)
    with pytest.raises(CorpusError, match=r"the sound is silent") as caught:
        build_in_child([silent], shape, CorpusConfig(), name="q", out=tmp_path / "q.dsb")
    assert "\n" not in str(caught.value) and not (tmp_path / "q.dsb").exists()

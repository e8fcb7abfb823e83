"""Training runs: step budget, best-epoch weights, fine-tuning, finding a bundle's run."""

import numpy as np
import pytest

from device.config import with_overrides
from train_host.config import load_train_config
from device.errors import BundleError, ConfigError, DanceSamplerError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tiny_config_file):
    from train_host.demo_data import demo_examples

    cfg = load_train_config(tiny_config_file)
    return cfg, demo_examples(cfg)


def test_step_budget_ends_training_and_the_best_epoch_is_kept(tiny, tmp_path):
    from train_host.train import load_run, train

    cfg, (train_set, validation, _) = tiny
    cfg = with_overrides(cfg, {"training.max_steps": 15, "training.epochs": 50})
    run = train(cfg, train_set, validation, tmp_path / "run")
    assert run.info["steps"] == 15
    assert len(run.info["history"]) < 50
    history = run.info["history"]
    best = min(history, key=lambda r: r["val_motion_spectral"])
    assert run.info["best_epoch"] == best["epoch"]
    for folder in ("weights", "best", "checkpoint"):
        assert (tmp_path / "run" / folder / "audio_decoder.weights.h5").exists()
    assert load_run(tmp_path / "run").info["config_hash"] == run.info["config_hash"]


def test_motion_noise_is_seeded_and_changes_what_is_learned(tiny, tmp_path):
    """``training.motion_noise`` is read, and a run with it is still reproducible."""
    import numpy as np

    from train_host.train import train

    cfg, (train_set, validation, _) = tiny
    cfg = with_overrides(cfg, {"training.max_steps": 10, "training.epochs": 1})
    runs = [train(with_overrides(cfg, {"training.motion_noise": noise}), train_set, validation,
                  tmp_path / f"run{i}") for i, noise in enumerate((0.0, 1.0, 1.0))]
    clean, noisy, again = (run.vae.motion_encoder.get_weights() for run in runs)
    assert all(np.array_equal(a, b) for a, b in zip(noisy, again))
    assert not all(np.array_equal(a, b) for a, b in zip(clean, noisy))


def test_the_loudness_loss_asks_for_the_true_level_whatever_the_notes(tiny, tmp_path):
    """The spectral and waveform terms are least wrong for a wrong sound played
    quietly; the loudness term asks for the true level, and is read from the config."""
    import numpy as np
    import tensorflow as tf

    from train_host.train import train
    from train_host.vae import loudness_loss, spectral_loss

    t = np.arange(2205) / 22050
    true = tf.constant([0.3 * np.sin(2 * np.pi * 440 * t)], tf.float32)
    wrong = tf.constant([0.3 * np.sin(2 * np.pi * 620 * t)], tf.float32)   # other notes
    assert float(spectral_loss(true, 0.5 * wrong)) < float(spectral_loss(true, wrong))
    assert float(loudness_loss(true, wrong)) == pytest.approx(0.0, abs=1e-3)
    assert float(loudness_loss(true, 0.5 * wrong)) == pytest.approx(np.log(2), abs=1e-3)

    cfg, (train_set, validation, _) = tiny
    cfg = with_overrides(cfg, {"training.max_steps": 10, "training.epochs": 1})
    runs = [train(with_overrides(cfg, {"training.loudness_weight": w}), train_set, validation,
                  tmp_path / f"run{i}") for i, w in enumerate((0.0, 1.0))]
    without, with_ = (run.vae.audio_decoder.get_weights() for run in runs)
    assert not all(np.array_equal(a, b) for a, b in zip(without, with_))


def test_even_levels_brings_a_quieter_take_to_the_training_level_before_training(tiny, tmp_path):
    from train_host.dataset import Examples, take_levels_db
    from train_host.train import train

    cfg, (train_set, validation, _) = tiny
    # A copy (the fixture is shared), the validation take recorded 20 dB quieter.
    train_set = Examples(train_set.motion, train_set.audio.copy(), train_set.labels,
                         train_set.take)
    validation = Examples(validation.motion, validation.audio * np.float32(0.1),
                          validation.labels, validation.take)
    reference = float(np.median(list(take_levels_db(train_set).values())))
    assert max(take_levels_db(validation).values()) < reference - 15

    train(with_overrides(cfg, {"training.max_steps": 2, "training.even_levels": True}),
          train_set, validation, tmp_path / "run")

    for examples in (train_set, validation):
        for level in take_levels_db(examples).values():
            assert level == pytest.approx(reference, abs=0.01)


def test_calibrate_level_makes_the_box_play_the_training_takes_at_their_level(tiny, tmp_path):
    from train_host.train import box_level_offset_db, load_run, train

    cfg, (train_set, validation, _) = tiny
    cfg = with_overrides(cfg, {"training.max_steps": 3})
    plain = train(cfg, train_set, validation, tmp_path / "plain")
    offset = box_level_offset_db(plain.vae, train_set, cfg)
    assert abs(offset) > 1.0 and plain.info["level_calibration_db"] is None

    calibrated = train(with_overrides(cfg, {"training.calibrate_level": True}), train_set,
                       validation, tmp_path / "calibrated")
    assert calibrated.info["level_calibration_db"] == pytest.approx(-offset, abs=1e-3)
    # The run folder, which export reads, plays the training takes at their level.
    saved = load_run(tmp_path / "calibrated")
    assert box_level_offset_db(saved.vae, train_set, cfg) == pytest.approx(0.0, abs=0.05)
    # The level output and nothing else: the same shape, the same latent.
    for part in ("motion_encoder", "audio_encoder", "motion_decoder"):
        for a, b in zip(getattr(plain.vae, part).get_weights(),
                        getattr(saved.vae, part).get_weights()):
            np.testing.assert_array_equal(a, b)
    for before, after in zip(plain.vae.audio_decoder.layers, saved.vae.audio_decoder.layers):
        if before.name != "level":
            for a, b in zip(before.get_weights(), after.get_weights()):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("key, term", [("spread_weight", "box_spread"),
                                       ("onset_weight", "box_onset"),
                                       ("chroma_weight", "chroma")])
def test_a_loss_weight_adds_its_term_to_the_loss_it_trains_on(tiny, tmp_path, key, term):
    """training.spread_weight and training.onset_weight (on the box's sound) and
    training.chroma_weight (on each posterior's, weighted as the others): each adds
    its term, weighted, and nothing else."""
    from train_host.train import train

    cfg, (train_set, validation, _) = tiny
    first = {w: train(with_overrides(cfg, {"training.max_steps": 1, f"training.{key}": w}),
                      train_set, validation, tmp_path / f"run{w}").info["history"][0]
             for w in (0.0, 2.0)}
    value = first[2.0][f"train_{term}"]
    assert value > 0 and f"train_{term}" not in first[0.0]
    # The same first step otherwise: the difference is the weighted term, no more.
    assert first[2.0]["train_total"] - first[0.0]["train_total"] == pytest.approx(
        2.0 * value, rel=1e-3)


def test_consecutive_finds_each_window_that_follows_the_one_before_in_its_take(tiny):
    """The onset loss pairs each window with the window one frame earlier: only
    where both are in the training set, in the same take, one frame apart."""
    from train_host.dataset import Examples, consecutive

    cfg, (train_set, _, _) = tiny
    follows = consecutive(train_set)
    firsts = np.flatnonzero(np.diff(train_set.take)) + 1    # each take's first window
    assert not follows[0] and not follows[firsts].any()
    assert follows.sum() == len(train_set) - 1 - len(firsts)
    # Every other window: none follows the one before it, but where the dancer
    # stands still, and still windows are alike whatever lies between them.
    apart = train_set.subset(np.arange(0, len(train_set), 2))
    still = consecutive(apart)
    assert still.sum() < 0.5 * len(apart)
    held = apart.motion[still][:, :-1]
    assert (held[:, 1:] == held[:, :-1]).all()
    # Two takes end to end: the second's first window does not follow the first's last.
    one = train_set.subset(np.flatnonzero(train_set.take == train_set.take[0]))
    two = Examples.concatenate([one, Examples(one.motion, one.audio, one.labels,
                                              one.take + 1)])
    assert consecutive(two).sum() == 2 * (len(one) - 1)


def test_fine_tuning_starts_from_the_trained_model(tiny, tiny_run, tmp_path):
    import numpy as np

    from train_host.train import train

    cfg, (train_set, validation, _) = tiny
    # With a vanishing step size, one epoch leaves the weights where they started.
    still = with_overrides(cfg, {"training.epochs": 1, "training.learning_rate": 1e-6})
    tuned = train(still, train_set, validation, tmp_path / "tuned", init_from=tiny_run)
    fresh = train(still, train_set, validation, tmp_path / "fresh")
    assert tuned.info["init_from"] == str(tiny_run.path)
    assert tuned.info["input_scale"] == tiny_run.info["input_scale"]
    base = tiny_run.vae.audio_decoder.get_weights()
    drift = lambda run: max(np.abs(a - b).max()
                            for a, b in zip(run.vae.audio_decoder.get_weights(), base))
    assert drift(tuned) < 1e-3 < drift(fresh)


def test_fine_tuning_refuses_another_architecture(tiny, tiny_run, tmp_path):
    from train_host.train import train

    cfg, (train_set, validation, _) = tiny
    other = with_overrides(cfg, {"model.hidden_units": 48})
    with pytest.raises(ConfigError, match="cannot fine-tune it with this config: model differ"):
        train(other, train_set, validation, tmp_path / "x", init_from=tiny_run)


def test_bench_train_times_fine_tuning_from_a_run(tiny_run, tiny_config_file, tmp_path):
    """``bench-train --init-from`` times the recipe developers run on their takes:
    fine-tuning, which refuses a config of other shapes as ``train`` does."""
    import json
    import subprocess
    import sys

    def bench(config):
        return subprocess.run([sys.executable, "-m", "train_host", "bench-train", "--hours",
                               "0.01", "--init-from", str(tiny_run.path), "--config",
                               str(config)], capture_output=True, text=True, timeout=600)

    result = bench(tiny_config_file)
    assert result.returncode == 0, result.stderr
    timing = json.loads(result.stdout)
    assert timing["fine_tuned_from"] == str(tiny_run.path)
    assert timing["steps"] > 0 and timing["examples"] > 0
    other = tmp_path / "other.yaml"
    other.write_text(tiny_config_file.read_text().replace("hidden_units: 32",
                                                          "hidden_units: 48"))
    result = bench(other)
    assert result.returncode == 1
    assert "cannot fine-tune it with this config: model differ" in result.stderr


def test_a_bundle_leads_back_to_its_run(tiny_run, tiny_bundle, tmp_path):
    import shutil

    from device.bundle import read_bundle
    from train_host.export import least_snr_of_its_run_db
    from train_host.train import _save_weights, find_run, load_run

    with pytest.raises(BundleError, match="is not in"):
        find_run(tiny_bundle, runs=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DanceSamplerError, match=r"empty: not a run folder \(no config.yaml, "
                                                r"run.json, weights\)"):
        find_run(tmp_path / "empty")
    digest = tiny_run.info["config_hash"]
    own = tmp_path / "own"
    shutil.copytree(tiny_run.path, own / f"tiny-{digest}")
    assert find_run(tiny_bundle, runs=own).path == own / f"tiny-{digest}"
    # The same config trained again (another processor, another day): other weights.
    # A different model plays about 0 dB against the bundle; the tiny model's int8
    # graph, trained 15 steps, plays its own run at 7.7 dB on one processor
    # (an AMD EPYC), too little to tell the two apart by.
    bundle = read_bundle(tiny_bundle)
    exported = bundle.manifest.training["metrics"]["int8_snr_db"]
    if least_snr_of_its_run_db(bundle) < 1.0:
        pytest.skip(f"the tiny bundle's int8 graph measured {exported:.1f} dB against its "
                    "float model at export: too little to tell another run of its config "
                    "from its own")
    again = tmp_path / f"zz-{digest}-again"
    shutil.copytree(tiny_run.path, again)
    retrained = load_run(again)
    rng = np.random.default_rng(0)
    for part in retrained.vae.parts.values():
        part.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                          for w in part.get_weights()])
    _save_weights(retrained.vae, again / "weights")
    with pytest.raises(BundleError, match=f"holds runs of its config {digest} but not its "
                                          "weights .*zz-"):
        find_run(tiny_bundle, runs=tmp_path)
    shutil.copytree(tiny_run.path, tmp_path / f"tiny-{digest}")
    found = find_run(tiny_bundle, runs=tmp_path)
    assert found.path == tmp_path / f"tiny-{digest}"


def test_the_spectral_loss_sees_the_ends_of_a_segment():
    """Garbage at a segment's first or last samples costs as much as in its middle:
    the box plays those samples too."""
    import numpy as np
    import tensorflow as tf

    from train_host.vae import spectral_loss

    rng = np.random.default_rng(0)
    t = np.arange(2205) / 22050
    clean = (0.1 * np.sin(2 * np.pi * 330 * t) + 0.01 * rng.standard_normal(2205))[None]
    costs = {}
    for where in ("start", "middle", "end"):
        spoiled = clean.copy()
        at = {"start": 0, "middle": 1100, "end": 2205 - 32}[where]
        spoiled[0, at:at + 32] += 0.5
        costs[where] = float(spectral_loss(tf.constant(clean, tf.float32),
                                           tf.constant(spoiled, tf.float32)))
    assert costs["start"] > 0.5 * costs["middle"] and costs["end"] > 0.5 * costs["middle"]


def test_the_product_of_experts_gives_back_a_lone_expert_and_weights_by_precision():
    import numpy as np
    import tensorflow as tf

    from train_host.vae import product_of_experts

    m, logvar = tf.constant([[0.8, -0.3]]), tf.constant([[-2.0, 1.0]])
    mu, _ = product_of_experts((m, logvar))
    assert np.allclose(mu.numpy(), m.numpy())               # expert times prior is m itself
    # Two experts: the textbook product of N(0, 1) and the experts' own Gaussians,
    # whose means are m (1 + P) / P.
    m2, logvar2 = tf.constant([[-0.5, 0.4]]), tf.constant([[0.5, -1.0]])
    joint, joint_logvar = product_of_experts((m, logvar), (m2, logvar2))
    p1, p2 = np.exp(-logvar.numpy()), np.exp(-logvar2.numpy())
    own1, own2 = m.numpy() * (1 + p1) / p1, m2.numpy() * (1 + p2) / p2
    assert np.allclose(joint.numpy(), (own1 * p1 + own2 * p2) / (1 + p1 + p2), atol=1e-6)
    assert np.allclose(joint_logvar.numpy(), -np.log(1 + p1 + p2), atol=1e-6)


def test_the_log_mel_loss_is_the_distance_evaluate_reports():
    """Training's log-mel term (training.mel_weight) measures a segment exactly as
    `evaluate` does: same spectra, and the loss is the distance in tens of dB."""
    tf = pytest.importorskip("tensorflow")
    from train_host.evaluate import Spectra, log_mel_distance
    from train_host.vae import LogMel, log_mel_loss

    rng = np.random.default_rng(3)
    true = (0.1 * rng.standard_normal((4, 2205))).astype(np.float32)
    made = (0.05 * rng.standard_normal((4, 2205))).astype(np.float32)
    spectra, log_mel = Spectra(22050, 2205), LogMel(22050, 2205)
    np.testing.assert_allclose(log_mel(tf.constant(true)).numpy(), spectra.log_mel(true),
                               atol=1e-3)
    loss = float(log_mel_loss(log_mel, log_mel(tf.constant(true)), tf.constant(made)))
    assert loss == pytest.approx(log_mel_distance(made, true, spectra).mean() / 10, rel=1e-4)


def test_the_chroma_loss_is_least_for_the_likelier_chord_not_a_blend():
    """training.chroma_weight: each segment's pitch classes as `evaluate` names them
    (A is 0), its profile near 0 for a segment with no pitch; and where a window
    could go with either of two chords, one twice as likely, the likelier chord
    alone is nearer than any blend of the two, which the spectral loss prefers."""
    tf = pytest.importorskip("tensorflow")
    from train_host.vae import SegmentChroma, chroma_loss

    n, rate = 2205, 22050
    t = np.arange(n) / rate

    def chord(*freqs, gain=0.1):
        return (gain * sum(np.sin(2 * np.pi * f * t) for f in freqs)).astype(np.float32)

    chroma = SegmentChroma(rate, n)
    profiles = chroma(tf.constant(np.stack([chord(440), chord(660), chord(300),
                                            chord(440, gain=1e-5)]))).numpy()
    # 440 Hz is A (0); 660 Hz is E (7); 300 Hz, 0.37 semitone over D, is D (5).
    assert [int(np.argmax(p)) for p in profiles[:3]] == [0, 7, 5]
    # A partial's Hann window spreads it over the 10 Hz bins either side: at 300 Hz
    # the one above is D#.
    assert np.all(profiles[:2].max(axis=1) > 0.97) and profiles[2].max() > 0.8
    assert profiles[3].sum() < 0.01                      # -106 dB: no pitch

    d_major, a_major = chord(300, 360, 450), chord(220, 270, 330)   # D F# A, A C# E
    truths = tf.constant(np.stack([d_major, d_major, a_major]))   # D twice as likely

    def expected(made):
        return float(chroma_loss(chroma, chroma(truths), tf.constant(np.stack([made] * 3))))

    alone = expected(d_major)
    for share in (0.25, 0.5, 0.75):
        blend = ((1 - share) * d_major + share * a_major).astype(np.float32)
        assert alone < expected(blend) - 0.02


def test_the_kept_pitch_loss_lets_the_pitch_move_as_a_whole_but_keeps_which_window_is_higher():
    """training.kept_pitch_weight compares how each window's pitch classes differ
    from the others': every window moved to the same new chords costs nothing, while
    windows that no longer differ, or differ the other way round, cost."""
    tf = pytest.importorskip("tensorflow")
    from train_host.vae import SegmentChroma, chroma_loss, kept_pitch_loss

    n, rate = 2205, 22050
    t = np.arange(n) / rate

    def chord(*freqs):
        return (0.1 * sum(np.sin(2 * np.pi * f * t) for f in freqs)).astype(np.float32)

    chroma = SegmentChroma(rate, n)
    d_major, a_major, g_note = chord(300, 360, 450), chord(220, 270, 330), chord(196)
    kept = chroma(tf.constant(np.stack([d_major, a_major])))

    def cost(*segments):
        return float(kept_pitch_loss(chroma, kept, tf.constant(np.stack(segments))))

    assert cost(d_major, a_major) < 1e-6
    # The same two chords, each with a G that both share: moved as a whole, at
    # under half of what the distance between the profiles themselves charges.
    moved = (d_major + g_note, a_major + g_note)
    assert cost(*moved) < 0.1
    assert cost(*moved) < float(chroma_loss(chroma, kept, tf.constant(np.stack(moved)))) / 2
    assert cost(d_major, d_major) > 0.3                  # the dance no longer moves it
    assert cost(a_major, d_major) > 1.5 * cost(d_major, d_major)   # moved the other way


def test_the_spread_loss_compares_how_much_each_take_s_sound_moves():
    """training.spread_weight: the band-by-band spread of the sound over each take,
    generated against true; blind to a take's overall level, and to a take with one
    segment in the batch (no spread to compare)."""
    tf = pytest.importorskip("tensorflow")
    from train_host.vae import LogMel, spread_loss

    rng = np.random.default_rng(5)
    noise = rng.standard_normal((7, 2205)).astype(np.float32)
    gains = np.float32([0.1, 0.01, 0.1, 0.01, 0.05, 0.05, 0.3])[:, None]   # A moves 20 dB
    takes = tf.constant([0, 0, 0, 0, 1, 1, 2], tf.int32)
    true = noise * gains
    log_mel = LogMel(22050, 2205)

    def loss(made):
        return float(spread_loss(log_mel, log_mel(tf.constant(true)), tf.constant(made), takes,
                                 3))

    assert loss(true) == 0.0
    louder_b = true * np.float32([1, 1, 1, 1, 3, 3, 1])[:, None]
    lone_c = true * np.float32([1, 1, 1, 1, 1, 1, 0.001])[:, None]
    assert loss(louder_b) < 1e-4 and loss(lone_c) < 1e-4
    steady = noise * np.float32(0.03)           # every segment at one level
    # A's segments 20 dB apart against none: several dB of spread missing in A,
    # none in B (the noise's own frame-to-frame scatter is in both).
    assert loss(steady) > 0.25


def test_the_onset_loss_compares_how_far_each_take_s_sound_rises_frame_to_frame():
    """training.onset_weight: the mean rise of the sound from the segment before,
    per take, generated against true; blind to a take's overall level and to
    segments without a predecessor."""
    tf = pytest.importorskip("tensorflow")
    from train_host.vae import LogMel, onset_loss

    rng = np.random.default_rng(5)
    noise = rng.standard_normal((9, 2205)).astype(np.float32)
    # Take A pulses 20 dB from frame to frame; B is steady; C's one segment has
    # no predecessor.
    gains = np.float32([0.01, 0.1, 0.01, 0.1, 0.05, 0.05, 0.05, 0.05, 0.3])[:, None]
    takes = tf.constant([0, 0, 0, 0, 1, 1, 1, 1, 2], tf.int32)
    follows = tf.constant([0, 1, 1, 1, 0, 1, 1, 1, 0], tf.float32)
    true = noise * gains
    log_mel = LogMel(22050, 2205)

    def before(x):     # each segment's predecessor in its take (itself for the first)
        return x[[0, 0, 1, 2, 4, 4, 5, 6, 8]]

    def loss(made):
        return float(onset_loss(log_mel, log_mel(tf.constant(true)),
                                log_mel(tf.constant(before(true))), tf.constant(made),
                                tf.constant(before(made)), follows, takes, 3))

    assert loss(true) == 0.0
    louder_b = true * np.float32([1, 1, 1, 1, 3, 3, 3, 3, 1])[:, None]
    no_c = true * np.float32([1, 1, 1, 1, 1, 1, 1, 1, 0.001])[:, None]
    assert loss(louder_b) < 1e-4 and loss(no_c) < 1e-4
    steady = noise * np.float32(0.03)
    # A rises 20 dB every other frame against not at all: several dB of rise
    # missing in A; B's noise rises as much as it did.
    assert loss(steady) > 0.15


def test_the_dynamics_weight_keeps_the_starting_model_s_loudness_following_the_dance(
        tiny, tiny_run, tmp_path):
    """training.dynamics_weight: fine-tuned on takes whose sound stays at one level
    whatever the dance (as songs do), the box's level keeps moving with the motion
    as the model fine-tuned from made it move; without it, that is lost."""
    from train_host.dataset import Examples
    from train_host.train import _box_level_db, train

    cfg, (train_set, validation, _) = tiny
    rms = np.sqrt(np.mean(train_set.audio ** 2, axis=1, keepdims=True)) + 1e-4
    steady = Examples(train_set.motion, (train_set.audio / rms * 0.1).astype(np.float32),
                      train_set.labels, train_set.take)
    # 150 steps: at 60 the outcome hung on the processor's rounding (on an Intel
    # Xeon, 2.5 against 3.4 dB of drift; at 150, 1.5 against 5.2).
    tune = with_overrides(cfg, {"training.max_steps": 150, "training.epochs": 500})
    kept = _box_level_db(tiny_run.vae, steady.motion, 256)
    kept -= kept.mean()

    def played(weight, depth=1.0):
        run = train(with_overrides(tune, {"training.dynamics_weight": weight,
                                          "training.dynamics_depth": depth}), steady,
                    validation, tmp_path / f"w{weight}-d{depth}", init_from=tiny_run)
        levels = _box_level_db(run.vae, steady.motion, 256)
        return levels - levels.mean()

    def drift(levels, target):
        return float(np.mean(np.abs(levels - target)))

    assert np.ptp(kept) > 6.0            # the starting model's level moves with the dance
    plain, whole = played(0.0), played(30.0)
    assert drift(plain, kept) > 1.0      # steady takes teach it to stop moving
    assert drift(whole, kept) < 0.5 * drift(plain, kept)
    # dynamics_depth 0.5: the same windows louder, over half the range. The order
    # of the windows' levels, not a Pearson correlation, which the starting
    # model's few near-silent windows (60 dB under the rest) would dominate.
    half = played(30.0, 0.5)
    assert drift(half, 0.5 * kept) < 0.5 * drift(whole, 0.5 * kept)
    ranks = [np.argsort(np.argsort(levels)) for levels in (half, kept)]
    assert np.corrcoef(*ranks)[0, 1] > 0.9

    with pytest.raises(ConfigError, match="training.dynamics_weight"):
        train(with_overrides(tune, {"training.dynamics_weight": 1.0}), steady, validation,
              tmp_path / "scratch")


def test_a_dynamics_floor_keeps_no_dip_deeper_than_it_and_leaves_the_rest(tiny, tiny_run):
    """training.dynamics_floor_db: the levels the dynamics loss keeps lie no deeper
    than the floor under their median (a dancer standing still is not asked for
    the starting model's silence), and every window above it keeps its level."""
    from train_host.train import kept_levels_db

    cfg, (train_set, _, _) = tiny
    whole = kept_levels_db(tiny_run.vae, train_set.motion, cfg.training)
    median = float(np.median(whole))
    floor = (median - float(whole.min())) / 2
    assert floor > 1.0                   # the starting model dips
    floored = kept_levels_db(tiny_run.vae, train_set.motion,
                             with_overrides(cfg, {"training.dynamics_floor_db": floor}).training)
    assert floored.min() >= median - floor - 1e-3
    above = whole >= median - floor
    assert not above.all()
    np.testing.assert_array_equal(floored[above], whole[above])


def test_the_kept_pitch_weight_keeps_the_starting_model_s_pitch_following_the_dance(
        tiny, tiny_run, tmp_path):
    """training.kept_pitch_weight: fine-tuned on takes whose sound is one note
    whatever the dance (a song's chords are not in its dance), how the pitch classes
    the box plays for each window differ from one window to the next stays as the
    model fine-tuned from played them; without it, every window drifts towards that
    note, and which windows play higher or lower than the others is no longer the
    starting model's."""
    from train_host.dataset import Examples
    from train_host.train import kept_pitch_classes, train
    from train_host.vae import SegmentChroma

    cfg, (train_set, validation, _) = tiny
    chroma = SegmentChroma(cfg.data.sample_rate, train_set.audio.shape[1])
    seconds = np.arange(train_set.audio.shape[1]) / cfg.data.sample_rate
    note = (0.1 * np.sin(2 * np.pi * 370.0 * seconds)).astype(np.float32)   # F sharp
    steady = Examples(train_set.motion, np.tile(note, (len(train_set), 1)),
                      train_set.labels, train_set.take)
    tune = with_overrides(cfg, {"training.max_steps": 60, "training.epochs": 50})
    kept = kept_pitch_classes(tiny_run.vae, steady.motion, chroma, 256)

    def drift(weight):
        run = train(with_overrides(tune, {"training.kept_pitch_weight": weight}), steady,
                    validation, tmp_path / f"w{weight}", init_from=tiny_run)
        played = kept_pitch_classes(run.vae, steady.motion, chroma, 256)
        return float(np.mean(0.5 * np.abs(departures(played) - departures(kept)).sum(axis=1)))

    def departures(profiles):
        return profiles - profiles.mean(axis=0)

    # The starting model's pitch classes move from window to window.
    spread = float(np.mean(0.5 * np.abs(departures(kept)).sum(axis=1)))
    assert spread > 0.05
    plain, held = drift(0.0), drift(100.0)
    assert plain > 0.5 * spread          # one note everywhere: the windows' differences lost
    assert held < 0.5 * plain

    with pytest.raises(ConfigError, match="training.kept_pitch_weight"):
        train(with_overrides(tune, {"training.kept_pitch_weight": 1.0}), steady, validation,
              tmp_path / "scratch")

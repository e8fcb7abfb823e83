"""The run plots: valid PNGs, byte-identical on repeat, and the edge cases a run
can hand them (no validation, one label, few examples, no history)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("matplotlib")

from train_host.dataset import Examples  # noqa: E402
from train_host.plots import (latent_figures, log_spectrogram, loss_figure, pca_2d,  # noqa: E402
                              pick_spectrogram_examples, write_plots)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = ["loss.png", "latent_by_label.png", "latent_by_motion.png", "spectrograms.png"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of a tiny model on 20 s of demo data: a real history and model."""
    from device.config import with_overrides
    from train_host.config import load_train_config
    from train_host.demo_data import demo_examples
    from train_host.train import train

    cfg = with_overrides(load_train_config(), {
        "demo.seconds": 20.0, "training.epochs": 1, "model.hidden_units": 16,
        "model.latent_size": 4})
    train_set, validation, _ = demo_examples(cfg)
    result = train(cfg, train_set, validation, tmp_path_factory.mktemp("runs") / "tiny")
    return result, train_set


def _write(run, out, examples=None, history=None, **kwargs):
    result, train_set = run
    cfg = result.config
    return write_plots(out, result.info["history"] if history is None else history,
                       result.vae, train_set if examples is None else examples,
                       motiongram_params=cfg.motiongram, sample_rate=cfg.data.sample_rate,
                       **kwargs)


def _check_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.shape[0] >= 200 and image.shape[1] >= 200


@pytest.fixture(scope="module")
def written_twice(run, tmp_path_factory):
    """The plots of one run written twice over, into two folders."""
    folder = tmp_path_factory.mktemp("plots")
    return _write(run, folder / "a"), _write(run, folder / "b")


def test_writes_every_plot_as_a_valid_png(written_twice, tmp_path):
    paths = written_twice[0]
    assert [p.name for p in paths] == ALL_PLOTS
    assert all(p.parent.name == "plots" and p.parent.parent.name == "a" for p in paths)
    for path in paths:
        _check_png(path)
    # Figures never go through pyplot, so none are left open in it.
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_same_inputs_give_byte_identical_files(written_twice):
    for a, b in zip(*written_twice, strict=True):
        data = a.read_bytes()
        assert data == b.read_bytes(), a.name
        assert b"Matplotlib" not in data   # no version stamp to change the bytes


def test_history_without_validation(run, tmp_path):
    from train_host.plots import _save

    history = [{k: v for k, v in record.items() if not k.startswith("val_")}
               for record in run[0].info["history"]]
    assert history and "train_motion_spectral" in history[0]
    fig = loss_figure(history)
    labels = [t.get_text() for ax in fig.axes if ax.get_legend()
              for t in ax.get_legend().get_texts()]
    assert labels and not any("(val)" in text for text in labels)
    assert "beta (KL weight, right axis)" in labels
    _check_png(_save(fig, tmp_path / "loss.png"))


def test_loss_plot_of_several_epochs_with_gaps():
    history = [{"epoch": i + 1, "beta": 0.001 * min(1, (i + 1) / 3),
                "train_total": 3.0 / (i + 1) ** 2, "train_motion_spectral": 2.0 / (i + 1),
                "train_joint_kl": 10.0 * (i + 1), "train_motion_kl": 5.0}
               for i in range(6)]
    for record in history[::2]:   # validation only on some epochs
        record.update(val_total=1.0, val_motion_spectral=1.0, val_joint_kl=2.0)
    fig = loss_figure(history)
    assert fig.axes[0].get_yscale() == "log"   # losses spanning a factor over ten
    assert len(fig.axes[0].get_legend().get_texts()) == 4


def test_single_label_and_fewer_examples_than_points(run, tmp_path):
    _, train_set = run
    few = train_set.subset(np.arange(0, len(train_set), len(train_set) // 30)[:30])
    few = Examples(few.motion, few.audio, np.full(len(few), "solo"), few.take)
    paths = _write(run, tmp_path, examples=few, max_points=2000)
    assert [p.name for p in paths] == ALL_PLOTS
    for path in paths:
        _check_png(path)


def test_no_history_and_no_examples_write_what_they_can(run, tmp_path):
    _, train_set = run
    # Two unlabelled examples: fewer than the spectrogram rows, and label "".
    two = train_set.subset(np.array([3, 40]))
    two = Examples(two.motion, two.audio, np.array(["", ""]), two.take)
    paths = _write(run, tmp_path / "a", examples=two, history=[])
    assert [p.name for p in paths] == ALL_PLOTS[1:]
    for path in paths:
        _check_png(path)
    empty = train_set.subset(np.arange(0))
    assert [p.name for p in _write(run, tmp_path / "b", examples=empty)] == ["loss.png"]


def test_latent_legend_has_one_entry_per_label():
    rng = np.random.default_rng(0)
    labels = np.array(["arms", "legs", "", "still"] * 25)
    fig, motion_fig = latent_figures(pca_2d(rng.normal(size=(100, 6))), labels,
                                     rng.uniform(size=100), total=1000)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["(no label)", "arms", "legs", "still"]
    # The motion scatter carries a colourbar saying what its colour is.
    assert len(motion_fig.axes) == 2 and "motion amount" in motion_fig.axes[1].get_ylabel()


def test_pca_orders_components_by_variance():
    rng = np.random.default_rng(1)
    # Spread 5, 2 and 0.5 along three rotated axes, plus an offset PCA must remove.
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    points = (rng.normal(size=(3000, 4)) * [0.5, 5.0, 0.1, 2.0]) @ rotation + 7.0
    coords, share = pca_2d(points)
    assert coords.shape == (3000, 2)
    variance = coords.var(axis=0)
    assert variance[0] > variance[1] > 0
    np.testing.assert_allclose(np.sqrt(variance), [5.0, 2.0], rtol=0.05)
    np.testing.assert_allclose(coords.mean(axis=0), 0, atol=1e-9)
    assert share[0] > share[1] and share.sum() <= 1
    # Same input, same orientation: the picture does not flip from call to call.
    np.testing.assert_array_equal(pca_2d(points)[0], coords)


def test_pca_of_degenerate_points():
    coords, share = pca_2d(np.ones((5, 3)))
    assert coords.shape == (5, 2) and not coords.any() and not share.any()
    assert pca_2d(np.zeros((1, 3)))[0].shape == (1, 2)


def test_spectrogram_examples_spread_over_labels_and_loudness():
    labels = np.repeat(["a", "b"], 100)
    loudness = np.tile(np.linspace(0, 1, 100), 2)
    chosen = pick_spectrogram_examples(labels, loudness, 4, np.random.default_rng(0))
    assert len(set(chosen)) == 4
    # Each label once quiet (its quietest quarter) and once loud (its loudest).
    for label in "ab":
        levels = sorted(loudness[i] for i in chosen if labels[i] == label)
        assert len(levels) == 2 and levels[0] < 0.25 and levels[1] > 0.75
    # One label: still quiet and loud; fewer examples than rows: each once.
    one = pick_spectrogram_examples(np.full(100, "x"), loudness[:100], 4,
                                    np.random.default_rng(0))
    assert len(set(one)) == 4 and min(loudness[one]) < 0.25 < 0.75 < max(loudness[one])
    assert sorted(pick_spectrogram_examples(np.array(["x", "y"]), np.array([0.1, 0.2]), 4,
                                            np.random.default_rng(0))) == [0, 1]


def test_log_spectrogram_puts_a_tone_at_its_frequency():
    rate = 22050
    tone = np.sin(2 * np.pi * 1000 * np.arange(2205) / rate)
    db, times, freqs = log_spectrogram(tone, rate)
    assert db.shape == (len(freqs), len(times)) and freqs[-1] == rate / 2
    assert 0 < times[0] and times[-1] < 0.1
    assert abs(freqs[db.mean(axis=1).argmax()] - 1000) <= freqs[1]
    assert db.max() == pytest.approx(20 * np.log10(0.5), abs=1.5)   # Hann: half the peak

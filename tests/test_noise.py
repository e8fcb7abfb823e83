"""Filtered noise a model controls (``device.noise``): its bands, its level through the
box's overlap-add, and a model fine-tuned into noise bands, exported and played."""

import dataclasses

import numpy as np
import pytest

from device.noise import NoiseBands, band_filters
from device.overlap_add import OverlapAdd

RATE, SEGMENT, HOP = 22050, 2205, 735


def _power_by_band(noise: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Mean power of each band's bins over many segments."""
    power = np.mean(np.abs(np.fft.rfft(noise, axis=-1)) ** 2, axis=0)
    return filters @ power / filters.sum(axis=1)


def test_the_bands_cover_every_frequency_once_and_each_amplitude_shapes_its_own_band():
    filters = band_filters(24, SEGMENT, RATE)
    np.testing.assert_allclose(filters.sum(axis=0), 1.0, atol=1e-6)
    noise = NoiseBands(24, segment_samples=SEGMENT, sample_rate=RATE,
                       rng=np.random.default_rng(0))
    amplitudes = np.zeros(24, np.float32)
    amplitudes[17] = 1.0
    heard = _power_by_band(np.stack([noise.render(amplitudes) for _ in range(200)]), filters)
    assert heard.argmax() == 17
    assert heard[17] > 10 * max(heard[15], heard[19])     # neighbours' neighbours: none
    # Either sign is the band's magnitude.
    noise.rng = np.random.default_rng(1)
    plus = noise.render(amplitudes)
    noise.rng = np.random.default_rng(1)
    np.testing.assert_array_equal(noise.render(-amplitudes), plus)


def test_the_stream_carries_the_noise_power_one_segment_had():
    """Fresh noise in overlapping segments adds in power; the box's stream must still
    play it at the level training heard in single segments (unit RMS here)."""
    noise = NoiseBands(32, segment_samples=SEGMENT, sample_rate=RATE,
                       rng=np.random.default_rng(2))
    noise.for_stream(HOP)
    single = NoiseBands(32, segment_samples=SEGMENT, sample_rate=RATE,
                        rng=np.random.default_rng(3))
    ones = np.ones(32, np.float32)
    segments = np.stack([single.render(ones) for _ in range(300)])
    assert np.sqrt(np.mean(segments ** 2)) == pytest.approx(1.0, abs=0.03)
    stream = OverlapAdd(SEGMENT, HOP)
    played = np.concatenate([stream.push(noise.render(ones)).copy() for _ in range(600)])[5 * HOP:]
    assert np.sqrt(np.mean(played ** 2)) == pytest.approx(1.0, abs=0.03)
    # Fresh each segment: two frames never repeat each other (no 30 Hz buzz).
    assert not np.allclose(played[:HOP], played[HOP:2 * HOP])


@pytest.mark.slow
def test_a_model_fine_tuned_into_noise_bands_exports_and_plays_in_the_box_runtime(
        tiny_config_file, tiny_run, tiny_noise_run, tiny_noise_bundle, tmp_path):
    import subprocess
    import sys

    from device.bundle import LATENT_VERSION, read_bundle
    from device.config import with_overrides
    from device.errors import ConfigError
    from tests.conftest import ROOT
    from train_host.config import load_train_config
    from train_host.demo_data import demo_examples
    from train_host.train import train

    run, bundle = tiny_noise_run, tiny_noise_bundle
    assert run.info["init_from"] == str(tiny_run.path)
    assert run.vae.audio_decoder.get_layer("noise").get_weights()[0].shape == (32, 16)
    # What the model knew is kept: with a vanishing step, every layer it had stays
    # where it was; only the noise output is new.
    cfg = load_train_config(tiny_config_file)
    train_set, validation, _ = demo_examples(cfg)
    still = train(with_overrides(cfg, {"model.noise_bands": 16, "training.epochs": 1,
                                       "training.learning_rate": 1e-6}),
                  train_set, validation, tmp_path / "still", init_from=tiny_run)
    for name, part in still.vae.parts.items():
        kept = [w for layer in part.layers if layer.name != "noise" for w in layer.get_weights()]
        base = [w for layer in tiny_run.vae.parts[name].layers for w in layer.get_weights()]
        assert max(np.abs(a - b).max() for a, b in zip(kept, base, strict=True)) < 1e-3, name
    manifest = read_bundle(bundle).manifest
    assert manifest.format_version == LATENT_VERSION and manifest.noise.shape == (1, 16)
    assert manifest.latent.shape == (1, 8)
    assert "and noise [1, 16] int8, latent 8 (an output)" in manifest.describe()
    # The box's runtime, alone in a fresh process, as on the box.
    played = subprocess.run(
        [sys.executable, "-c",
         "import sys, numpy as np\n"
         "from device.bundle import read_bundle\nfrom device.engine import Engine\n"
         "engine = Engine(read_bundle(sys.argv[1]), runtime='tflite_runtime')\n"
         "print(engine.performer.noise.bands, round(engine.performer.noise.gain, 2), "
         "np.isfinite(engine.performer(np.full((8, 112), 0.01, np.float32))).all())",
         str(bundle)], capture_output=True, text=True, cwd=ROOT)
    if "No module named 'tflite_runtime'" in played.stderr:
        pytest.skip("tflite_runtime is not installed")
    # The engine overlap-adds, so its noise is at the stream's level (1.40 at 2205/735).
    assert played.stdout.split() == ["16", "1.4", "True"], played.stderr[-2000:]

    # A model with noise bands cannot lose them or change their count by fine-tuning.
    for bands in (0, 8):
        with pytest.raises(ConfigError, match="cannot fine-tune it with this config: model"):
            train(with_overrides(cfg, {"model.noise_bands": bands}), train_set, validation,
                  tmp_path / f"x{bands}", init_from=run)


def test_a_manifest_and_graph_must_agree_on_noise(tiny_bundle, tmp_path):
    """A manifest that says noise over a graph without, or a wrong noise shape, is refused."""
    from device.bundle import LATENT_VERSION, TensorSpec, read_bundle, write_bundle
    from device.errors import BundleError
    from device.runtime import Performer

    bundle = read_bundle(tiny_bundle)
    lying = write_bundle(tmp_path / "lying.dsb", dataclasses.replace(
        bundle.manifest, format_version=LATENT_VERSION, noise=TensorSpec((1, 16), "int8")),
        bundle.graphs)
    with pytest.raises(BundleError, match="the manifest says the graph has a noise output, "
                                          "the graph has none"):
        Performer.of(read_bundle(lying))
    wrong = write_bundle(tmp_path / "wrong.dsb", dataclasses.replace(
        bundle.manifest, format_version=LATENT_VERSION, noise=TensorSpec((1, 1), "int8")),
        bundle.graphs)
    with pytest.raises(BundleError, match=r"wrong.dsb: noise shape \[1, 1\] should be "
                                          r"\[1, bands\] with 2 to 256 bands"):
        read_bundle(wrong)

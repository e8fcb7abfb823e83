"""The exported int8 bundle in the runtimes a box uses, against the Keras model."""

import json
import subprocess
import sys

import numpy as np
import pytest

from device.bundle import read_bundle
from tests.conftest import DEFAULT_BUNDLE, ROOT

pytestmark = pytest.mark.slow

# Runs in a fresh process per runtime, as on the box: only the device package and
# the one runtime are imported, never TensorFlow.
_RUN_IN_RUNTIME = """
import json, sys
import numpy as np
from device.bundle import read_bundle
from device.runtime import Performer
bundle, windows_file, out_file, runtime = sys.argv[1:]
bundle = read_bundle(bundle)
windows = np.load(windows_file)
one = Performer.of(bundle, runtime=runtime)
consecutive, latent = [], []
for w in windows:                                           # one interpreter, many invokes
    consecutive.append(one(w))
    latent.append(one.latent())
again = np.stack([one(w) for w in windows])
fresh = np.stack([Performer.of(bundle, runtime=runtime)(w) for w in windows[:5]])
np.savez(out_file, consecutive=np.stack(consecutive), latent=np.stack(latent), again=again,
         fresh=fresh)
module = __import__(runtime)
print(json.dumps({"runtime": one.runtime, "numpy": np.__version__,
                  "version": getattr(module, "__version__", "?"),
                  "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def _run_in(runtime, bundle, windows, tmp_path):
    np.save(tmp_path / "windows.npy", windows)
    out = tmp_path / f"{runtime}.npz"
    result = subprocess.run([sys.executable, "-c", _RUN_IN_RUNTIME, str(bundle),
                             str(tmp_path / "windows.npy"), str(out), runtime],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(out)


def _snr_db(reference, test):
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - test) ** 2))


@pytest.fixture(scope="module")
def keras_reference(tiny_run):
    """Validation windows that the model never trained on, and the float model's output."""
    from train_host.export import exported_model
    from train_host.vae import perform

    # Spread over the held-out takes: their first windows are a dancer standing still.
    windows = np.load(tiny_run.path / "calibration.npz")["validation"][::25][:40]
    model = exported_model(tiny_run)
    return windows, np.stack([perform(model, w[None])[0] for w in windows])


def _float_latent(run, windows):
    from train_host.vae import motion_latent

    return motion_latent(run.vae, windows)


@pytest.mark.parametrize("runtime", ["tflite_runtime", "ai_edge_litert"])
def test_bundle_runs_in_each_runtime_and_agrees_with_keras(runtime, tiny_run, tiny_bundle,
                                                           keras_reference, tmp_path):
    windows, reference = keras_reference
    info, out = _run_in(runtime, tiny_bundle, windows, tmp_path)
    assert info["runtime"] == runtime and not info["tensorflow_loaded"]
    if runtime == "tflite_runtime":
        assert info["version"] == "2.14.0" and int(info["numpy"].split(".")[0]) < 2
    # Repeated invokes of one interpreter give what a fresh interpreter gives.
    assert np.array_equal(out["consecutive"], out["again"])
    assert np.array_equal(out["consecutive"][:5], out["fresh"])
    # int8 against the float model, on windows it never trained on.
    assert _snr_db(reference, out["consecutive"]) > 15.0
    assert np.abs(reference).max() > 0.01        # the model makes sound, not silence
    # The latent it gives (for OSC) is the float model's posterior mean, in int8 steps.
    latent = _float_latent(tiny_run, windows)
    assert out["latent"].shape == latent.shape == (len(windows), 8)
    assert _snr_db(latent, out["latent"]) > 20.0 and np.std(latent, axis=0).min() > 0.01


def test_both_runtimes_give_the_same_samples(tiny_bundle, keras_reference, tmp_path):
    windows, _ = keras_reference
    _, a = _run_in("tflite_runtime", tiny_bundle, windows, tmp_path)
    _, b = _run_in("ai_edge_litert", tiny_bundle, windows, tmp_path)
    # tflite-runtime 2.14 runs int8 graphs on TensorFlow's reference kernels,
    # LiteRT on XNNPACK, which rounds a value the other way now and then: they
    # agree far more closely than either agrees with the float model.
    assert _snr_db(a["consecutive"], b["consecutive"]) > 30.0


def test_the_recorded_parity_is_what_the_box_runtime_gives(tiny_run, tiny_bundle, tmp_path):
    """The manifest's int8 figure is the one tflite-runtime 2.14, in a process of its
    own without TensorFlow, gives on the same held-out windows."""
    from train_host.export import exported_model
    from train_host.vae import perform

    windows = np.load(tiny_run.path / "calibration.npz")["validation"]
    model = exported_model(tiny_run)
    reference = np.stack([perform(model, w[None])[0] for w in windows])
    _, out = _run_in("tflite_runtime", tiny_bundle, windows, tmp_path)
    metrics = read_bundle(tiny_bundle).manifest.training["metrics"]
    box = metrics["int8_snr_db_by_runtime"]["reference kernels"]
    assert _snr_db(reference, out["consecutive"]) == pytest.approx(box, abs=0.05)
    assert metrics["int8_snr_db"] == min(metrics["int8_snr_db_by_runtime"].values())
    latent = _float_latent(tiny_run, windows)
    assert _snr_db(latent, out["latent"]) >= metrics["latent_snr_db"] - 0.05


def test_manifest_records_how_the_model_was_made(tiny_bundle):
    m = read_bundle(tiny_bundle).manifest
    assert (m.fps, m.audio.sample_rate, m.audio.segment_samples, m.audio.hop_samples) == \
        (30, 22050, 2205, 735)
    assert m.input.shape == (1, 8, 112) and m.input.dtype == "int8"
    assert set(m.style_centroids) == {"still", "sway", "arms", "legs", "travel", "jump"}
    assert all(len(c) == m.latent_size == 8 for c in m.style_centroids.values())
    assert np.isfinite(m.training["metrics"]["int8_snr_db"])
    assert m.training["data"]["source"] == "synthetic demo"


def test_rebuilding_gives_the_same_bytes(tiny_config_file, tmp_path):
    """make default-model is reproducible: two fresh builds, byte-identical bundles.
    Each says whether it gave the graph of the bundle it replaced, and how far its
    pitch follows the demo instrument's, and warns where that is short of the
    targets (a recipe trains elsewhere on another processor)."""
    import re
    import shutil

    built, results = [], []
    # Each build replaces a bundle: the shipped model's (another graph), then the first.
    for i, replaced in enumerate([DEFAULT_BUNDLE, tmp_path / "model0.dsb"]):
        out = tmp_path / f"model{i}.dsb"
        shutil.copyfile(replaced, out)
        result = subprocess.run([sys.executable, "-m", "train_host", "default-model",
                                 "--config", str(tiny_config_file), "--out", str(out),
                                 "--run", str(tmp_path / f"run{i}")],
                                cwd=ROOT, check=True, capture_output=True, text=True)
        built.append(out.read_bytes())
        results.append(result)
    assert built[0] == built[1]
    assert "another graph than the bundle it replaced" in results[0].stderr
    assert "the same graph as the bundle it replaced" in results[1].stdout
    assert "another graph" not in results[1].stderr
    said = re.search(r"demo instrument on 3 dances it never trained on \(seeds 2000, 2001, "
                     r"2002\): corr (-?[\d.]+), (-?[\d.]+) as much movement", result.stdout)
    assert said, result.stdout
    short = min(float(said[1]), float(said[2])) < 0.5
    assert ("WARNING" in result.stderr and "another training seed" in result.stderr) == short


def test_a_collapsed_model_is_refused_before_any_runtime_sees_it(tiny_run, tmp_path):
    """A model whose sound no longer depends on the motion plays one sound for every dance."""
    import shutil

    from device.errors import BundleError
    from train_host.export import export
    from train_host.train import load_run

    shutil.copytree(tiny_run.path, tmp_path / "run")
    run = load_run(tmp_path / "run")
    hidden = [l for l in run.vae.audio_decoder.layers if l.__class__.__name__ == "Dense"][1]
    kernel, bias = hidden.get_weights()
    hidden.set_weights([np.zeros_like(kernel), np.full_like(bias, 0.5)])    # deaf to the latent
    with pytest.raises(BundleError, match="the model has collapsed: it gives the same sound"):
        export(run, tmp_path / "dead.dsb")
    assert not (tmp_path / "dead.dsb").exists()


def test_a_run_without_its_calibration_windows_is_refused_in_one_line(tiny_run, tmp_path):
    """Export and ``--init-from`` a bundle both play the run's kept windows."""
    import shutil

    from device.errors import DanceSamplerError
    from train_host.export import export
    from train_host.train import CALIBRATION_FILE

    shutil.copytree(tiny_run.path, tmp_path / "run")
    (tmp_path / "run" / CALIBRATION_FILE).write_bytes(b"not an npz")
    with pytest.raises(DanceSamplerError, match=r"run/calibration.npz: cannot read the run's "
                                                "calibration windows"):
        export(tmp_path / "run", tmp_path / "x.dsb")
    assert not (tmp_path / "x.dsb").exists()


def test_a_layer_with_a_degenerate_int8_scale_is_refused(tiny_run, tmp_path):
    """Every unit of a layer at zero on every window: a scale LiteRT's XNNPACK cannot take."""
    import shutil

    from device.errors import BundleError
    from train_host.export import refuse_collapsed, to_int8_tflite
    from train_host.train import load_run
    from train_host.vae import performer

    shutil.copytree(tiny_run.path, tmp_path / "run")
    run = load_run(tmp_path / "run")
    hidden = [l for l in run.vae.audio_decoder.layers if l.__class__.__name__ == "Dense"][1]
    hidden.set_weights([np.zeros_like(w) for w in hidden.get_weights()])
    windows = np.load(run.path / "calibration.npz")["train"][:50]
    graph = to_int8_tflite(performer(run.vae), windows)
    with pytest.raises(BundleError, match="gives the same output for every motion window"):
        refuse_collapsed(graph, "run", windows)


def _graph_without_latent(tiny_run) -> bytes:
    """A graph as exported before version 6: shape and level, no latent."""
    from train_host.export import to_int8_tflite
    from train_host.vae import performer

    return to_int8_tflite(performer(tiny_run.vae),
                          np.load(tiny_run.path / "calibration.npz")["train"][:50])


def _single_output_graph(tiny_run) -> bytes:
    """A version 1 graph: the segment itself as the one output."""
    import keras

    from train_host.export import to_int8_tflite
    from train_host.vae import performer, synthesize

    model = performer(tiny_run.vae)
    single = keras.Model(model.inputs, keras.layers.Lambda(lambda t: synthesize(*t))(model.outputs))
    return to_int8_tflite(single, np.load(tiny_run.path / "calibration.npz")["train"][:50])


def test_a_version_1_bundle_still_plays_and_a_manifest_that_lies_is_refused(tiny_bundle,
                                                                              tiny_run, tmp_path):
    import dataclasses

    from device.bundle import write_bundle
    from device.errors import BundleError
    from device.runtime import Performer

    manifest = read_bundle(tiny_bundle).manifest
    old = write_bundle(tmp_path / "v1.dsb",
                       dataclasses.replace(manifest, format_version=1, level=None),
                       {"performer.tflite": _single_output_graph(tiny_run)})
    performer = Performer.of(read_bundle(old))
    assert not performer.has_level
    window = np.load(tiny_run.path / "calibration.npz")["validation"][0]
    assert performer(window).shape == (manifest.audio.segment_samples,)

    lying = write_bundle(tmp_path / "lying.dsb",
                         dataclasses.replace(manifest, format_version=1, level=None),
                         {"performer.tflite": read_bundle(tiny_bundle).performer})
    with pytest.raises(BundleError, match="the manifest says the graph has no level output, "
                                          "the graph has one"):
        Performer.of(read_bundle(lying))
    unknown = write_bundle(tmp_path / "v9.dsb", dataclasses.replace(manifest, format_version=9),
                           {"performer.tflite": read_bundle(tiny_bundle).performer})
    with pytest.raises(BundleError, match="bundle format version 9 is not supported"):
        read_bundle(unknown)


def test_the_latent_is_declared_by_the_manifest_and_the_graph_must_give_it(tiny_bundle,
                                                                           tiny_run, tmp_path):
    import dataclasses

    from device.bundle import TensorSpec, write_bundle
    from device.errors import BundleError
    from device.runtime import Performer

    bundle = read_bundle(tiny_bundle)
    manifest = bundle.manifest
    without = write_bundle(tmp_path / "without.dsb", manifest,
                           {"performer.tflite": _graph_without_latent(tiny_run)})
    with pytest.raises(BundleError, match="without.dsb: the manifest says the graph gives its "
                                          "latent, but the graph has only 2 outputs"):
        Performer.of(read_bundle(without))
    wrong = write_bundle(tmp_path / "wrong.dsb", dataclasses.replace(
        manifest, latent=TensorSpec((1, 4), "int8")), bundle.graphs)
    with pytest.raises(BundleError, match=r"wrong.dsb: latent shape \[1, 4\] should be "
                                          r"\[1, latent_size\] = \[1, 8\]"):
        read_bundle(wrong)
    # An older manifest over a graph with a latent: refused, never played as noise.
    older = write_bundle(tmp_path / "older.dsb", dataclasses.replace(
        manifest, format_version=5, latent=None), bundle.graphs)
    with pytest.raises(BundleError, match="says the graph has no noise output, the graph has one"):
        Performer.of(read_bundle(older))
    # A version 5 reader's view: the key is not read below version 6.
    assert read_bundle(write_bundle(tmp_path / "v5.dsb", dataclasses.replace(
        manifest, format_version=5), bundle.graphs)).manifest.latent is None


def test_the_motion_gain_travels_in_the_bundle_and_a_version_2_bundle_hears_motion_as_measured(
        tiny_bundle, tiny_run, tmp_path):
    import dataclasses

    from device.bundle import write_bundle
    from device.engine import Engine
    from device.errors import BundleError
    from device.motiongram import MotionGainParams

    bundle = read_bundle(tiny_bundle)
    manifest, graphs = bundle.manifest, dict(bundle.graphs)
    assert manifest.format_version == 6 and manifest.motion_gain == MotionGainParams()
    assert manifest.latent.shape == (1, 8) and "latent 8 (an output)" in manifest.describe()
    assert manifest.voice == "model" and manifest.corpus is None
    assert "gain        to 0.008 over 8 s" in manifest.describe()
    faint = np.zeros(112, np.float32)
    faint[20:30] = faint[70:80] = 0.002             # a small dancer far away
    assert Engine(bundle).gain.push(faint)[:64].mean() == pytest.approx(0.008, rel=1e-5)

    v2 = read_bundle(write_bundle(tmp_path / "v2.dsb", dataclasses.replace(
        manifest, format_version=2, motion_gain=None, latent=None),
        {"performer.tflite": _graph_without_latent(tiny_run)}))
    assert v2.manifest.motion_gain is None and "gain        none" in v2.manifest.describe()
    np.testing.assert_array_equal(Engine(v2).gain.push(faint), faint)

    bad = dataclasses.replace(manifest, motion_gain=dataclasses.replace(
        manifest.motion_gain, max_gain=-1.0))
    with pytest.raises(BundleError, match=r"bad.dsb: motion_gain.max_gain is -1.0; expected a "
                                          r"number from 1 to 1000"):
        read_bundle(write_bundle(tmp_path / "bad.dsb", bad, graphs))


def test_gptq_puts_weights_on_the_int8_grid_and_keeps_the_layer_output_closer():
    from train_host.export import gptq

    rng = np.random.default_rng(3)
    # Correlated, ReLU-like inputs, as a hidden layer gives.
    inputs = np.maximum(rng.normal(size=(2000, 12)) @ rng.normal(size=(12, 64)), 0)
    weights = rng.normal(scale=0.05, size=(64, 8)).astype(np.float32)
    rounded = gptq(weights, inputs)

    steps = np.abs(weights).max(axis=0) / 127
    levels = rounded / steps
    assert np.allclose(levels, np.round(levels), atol=1e-3)       # on the grid
    assert np.abs(np.round(levels)).max() <= 127
    # Each channel's largest weight stays, so the converter finds the same steps.
    assert np.allclose(np.abs(rounded).max(axis=0), np.abs(weights).max(axis=0))
    nearest = np.round(weights / steps) * steps
    error = np.linalg.norm(inputs @ (rounded - weights))
    assert error < 0.7 * np.linalg.norm(inputs @ (nearest - weights))


def test_balancing_the_partials_keeps_the_sound_and_rounds_the_quiet_partials_finer(tiny_run):
    """Each partial's amplitude reaches int8 at nearer one scale, the float sound unchanged."""
    from train_host.export import balance_partials, partial_amplitudes, sub_models
    from train_host.vae import partials_basis, perform, performer

    data = tiny_run.config.data
    windows = np.load(tiny_run.path / "calibration.npz")["train"][:200]
    model = performer(tiny_run.vae)
    balanced = balance_partials(model, windows)
    before, after = perform(model, windows), perform(balanced, windows)
    assert np.allclose(after, before, atol=1e-5 * np.abs(before).max())

    def rounding_db(graph):
        """The sound's SNR once only the amplitude tensor is rounded to its int8 step."""
        given = partial_amplitudes(graph, windows)
        step = np.abs(given).max() / 127
        rows = sub_models(graph)[1].get_layer("shape").get_weights()[0]
        return _snr_db(given @ rows, np.round(given / step) * step @ rows)

    reach = np.abs(partial_amplitudes(model, windows)).max(axis=0)
    assert reach.max() > 4 * np.median(reach)       # some partials quieter than others
    assert np.allclose(sub_models(model)[1].get_layer("shape").get_weights()[0],
                       partials_basis(data.segment_samples, data.hop_samples))
    assert rounding_db(balanced) > rounding_db(model) + 3


def test_the_converter_keeps_the_rounded_weights(tiny_run):
    """The int8 graph's weights are the GPTQ values exactly, not rounded a second time."""
    import keras
    import tensorflow as tf

    from train_host.export import round_weights, to_int8_tflite
    from train_host.vae import performer

    windows = np.load(tiny_run.path / "calibration.npz")["train"][:200]
    rounded = round_weights(performer(tiny_run.vae), windows)
    kernels = [layer.get_weights()[0] for part in rounded.layers
               if isinstance(part, keras.Model) for layer in part.layers
               if isinstance(layer, keras.layers.Dense) and layer.name != "logvar"]
    interpreter = tf.lite.Interpreter(model_content=to_int8_tflite(rounded, windows))
    in_graph = []
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["shape"]) == 2 and \
                detail["name"].startswith("tfl.pseudo_qconst"):
            scales = detail["quantization_parameters"]["scales"]
            values = interpreter.get_tensor(detail["index"]).astype(np.float32)
            in_graph.append((values * scales[:, None]).T)
    for kernel in kernels:
        same = [g for g in in_graph if g.shape == kernel.shape and
                np.allclose(g, kernel, atol=1e-6 * np.abs(kernel).max())]
        assert same, f"a {kernel.shape} kernel was rounded again by the converter"


def test_export_prints_its_stages_and_none_of_tensorflows_own_noise(tiny_run, tmp_path):
    import subprocess
    import sys

    def export(*extra):
        return subprocess.run([sys.executable, "-m", "train_host", *extra, "export",
                               str(tiny_run.path), "--out", str(tmp_path / "x.dsb")],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    quiet = export()
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.splitlines()
    assert lines and all(line.startswith(("INFO train_host", "WARNING train_host"))
                         for line in lines), quiet.stderr
    assert any("converting to int8" in line for line in lines)
    assert quiet.stdout == f"wrote {tmp_path / 'x.dsb'}\n"
    # --debug lets TensorFlow speak.
    loud = export("--debug")
    assert loud.returncode == 0 and len(loud.stderr.splitlines()) > len(lines) + 3


def test_export_on_a_terminal_shows_each_stage_with_the_time_left(tiny_run, tmp_path):
    import re
    import shlex
    import shutil
    import subprocess
    import sys

    if not shutil.which("script"):
        pytest.skip("no `script` (util-linux) to give the export a terminal")
    command = shlex.join([sys.executable, "-m", "train_host", "export", str(tiny_run.path),
                          "--out", str(tmp_path / "x.dsb")])
    tty = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert tty.returncode == 0, tty.stdout
    lines = [line.strip() for line in tty.stdout.replace("\r", "\n").splitlines() if line.strip()]
    assert re.search(r"rounding the weights: (\d+)/\1, about 0 s left", tty.stdout)
    assert re.search(r"int8 against float: (\d+)/\1, about 0 s left", tty.stdout)
    # The bars, the stages' own lines, and nothing of TensorFlow's.
    assert all(line.startswith(("INFO train_host", "WARNING train_host", "rounding the weights:",
                                "int8 against float:", "wrote ")) for line in lines), lines


def test_a_model_for_finer_frames_says_so_and_a_box_that_cannot_read_it_refuses_it(
        tiny_bundle, tmp_path):
    import dataclasses
    import zipfile

    from device.bundle import SCALE_VERSION, write_bundle
    from device.errors import BundleError

    bundle = read_bundle(tiny_bundle)
    manifest = bundle.manifest
    # Motion measured at the motiongram's own size: the manifest a version 6 box reads.
    as_written = json.loads(zipfile.ZipFile(tiny_bundle).read("manifest.json"))
    assert "scale" not in as_written["motiongram"] and as_written["format_version"] == 6
    finer = dataclasses.replace(manifest, motiongram=dataclasses.replace(
        manifest.motiongram, scale=2))
    path = write_bundle(tmp_path / "finer.dsb", finer, bundle.graphs)
    read = read_bundle(path).manifest
    assert read.format_version == SCALE_VERSION == 7 and read.motiongram.scale == 2
    assert "64x48 from 128x96 frames, threshold 0.05" in read.describe()
    # A manifest that claims an older version yet carries a scale is refused.
    data = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    for version, scale, message in (
            (6, 2, "motiongram.scale needs bundle format version 7, not 6"),
            (7, 9, "motiongram.scale 9: expected 1 to 4, with frames of at most 640x480")):
        data.update(format_version=version)
        data["motiongram"]["scale"] = scale
        with pytest.raises(BundleError, match=message):
            type(manifest).from_dict(data, "hand.dsb")


def test_a_model_of_partials_alone_is_exported_without_its_highest_partials(
        tiny_run, tiny_bundle, tiny_noise_bundle, tmp_path):
    """Its highest partials, the whole-band loss's stand-ins for the sound above
    them, are silent in the bundle and its float reference; the others play as
    trained. A model with noise bands keeps every partial."""
    from train_host.export import exported_model
    from train_host.vae import PARTIALS_TOP, perform, performer, stand_in_partials

    data = tiny_run.config.data
    silenced = stand_in_partials(data.hop_samples)
    assert read_bundle(tiny_bundle).manifest.training["silenced_partials_hz"] == \
        [(k + 1) * data.fps for k in silenced] == [8670, 8700, 8730, 8760, 8790, 8820]
    assert read_bundle(tiny_noise_bundle).manifest.training["silenced_partials_hz"] == []
    windows = np.load(tiny_run.path / "calibration.npz")["validation"][::10]
    # Partial k + 1 makes whole cycles in a hop: bin (k + 1) x hops of a segment.
    bins = data.segment_samples // data.hop_samples * np.arange(
        1, int(PARTIALS_TOP * data.hop_samples) + 1)

    def partials_db(segments):          # each partial's power, dB under the loudest's
        power = np.mean(np.abs(np.fft.rfft(segments, axis=1)) ** 2, axis=0)[bins]
        return 10 * np.log10(power / power.max() + 1e-30)

    trained = partials_db(perform(performer(tiny_run.vae), windows))
    exported = partials_db(perform(exported_model(tiny_run), windows))
    _, out = _run_in("tflite_runtime", tiny_bundle, windows, tmp_path)
    played = partials_db(out["consecutive"])
    rest = np.arange(silenced[0])
    assert trained[silenced].max() > -60               # the trained model plays them
    assert exported[silenced].max() < -100             # its exported float graph: nothing
    assert played[silenced].max() < trained[silenced].max() - 10
    assert np.allclose(exported[rest], trained[rest], atol=0.01)

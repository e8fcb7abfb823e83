"""Malformed bundles are refused in one line, never a traceback, hang or crash."""

import os

import pytest

from device.bundle import read_bundle
from device.errors import BundleError
from tests.fuzz_bundles import cases, installed_runtimes, run_case


def test_generated_malformed_bundles_are_refused_in_one_line(tmp_path):
    """60 generated cases through the reader and, for graphs that are read, a run
    in each installed runtime in a child process (`python -m tests.fuzz_bundles`
    runs a larger campaign)."""
    runtimes = installed_runtimes()
    outcomes = [run_case(data, tmp_path / f"case{i}.dsb", runtimes)
                for i, (_, data) in zip(range(60), cases(seed=7))]
    assert outcomes.count("refused") >= 40, outcomes


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "missing"])
def test_a_path_that_is_not_a_bundle_file_is_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "x.dsb"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)        # opening it would block for ever
    elif kind == "device":
        path.symlink_to("/dev/zero")   # reading it would never end
    with pytest.raises(BundleError, match=rf"^{tmp_path}/x\.dsb: (not a regular file|no such "
                                          "bundle)$"):
        read_bundle(path)


def test_a_graph_that_crashes_the_runtime_is_refused_by_check_bundle(tmp_path):
    """A graph that makes tflite-runtime 2.14 segfault (found by the generator) is
    refused in one line by check-bundle, which lives on to say so."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.fuzz_bundles import cases
    from device.runtime import probe_graph

    pytest.importorskip("tflite_runtime")
    for i, (what, data) in zip(range(400), cases(seed=0)):
        if what != "graph corrupted, checksum fixed":
            continue
        path = tmp_path / f"g{i}.dsb"
        path.write_bytes(data)
        try:
            probe_graph(read_bundle(path).performer, runtime="tflite_runtime", where=str(path))
        except BundleError as exc:
            if "crashed the model runtime (SIGSEGV)" in str(exc):
                break
    else:
        pytest.skip("no generated graph crashes tflite_runtime here")
    env = {**os.environ, "DANCESAMPLER_RUNTIME": "tflite_runtime"}
    result = subprocess.run([sys.executable, "-m", "device", "check-bundle", str(path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"{path}: the graph crashed the model runtime (SIGSEGV)" in result.stderr
    assert "Traceback" not in result.stderr

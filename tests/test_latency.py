"""Motion to sound, measured on the output itself, sample-exactly.

A video that stands still and then suddenly moves is played into a WAV file; the
sound must jump within one frame plus one hop of the first moving frame, and not
before it.
"""

import numpy as np
import pytest

from device.audio.wav import read_wav
from tests.test_cli import device

STILL_FRAMES, MOVING_FRAMES, HOP = 45, 45, 735


@pytest.fixture(scope="module")
def still_then_moving(tmp_path_factory):
    import av

    from device.camera.synthetic import SyntheticDancer

    still = SyntheticDancer(seed=2, energy=0.0).read().image
    dancer = SyntheticDancer(seed=2, energy=1.0)
    frames = [still] * STILL_FRAMES + [dancer.read().image for _ in range(MOVING_FRAMES)]
    path = tmp_path_factory.mktemp("video") / "still-then-moving.mkv"
    with av.open(str(path), "w") as container:       # lossless: exactly these frames
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="gray")))
        container.mux(stream.encode())
    return path


def _envelope(audio, width=64):
    """RMS over blocks of ``width`` samples; one value per block."""
    blocks = audio[:len(audio) // width * width].reshape(-1, width).astype(np.float64)
    return np.sqrt(np.mean(blocks ** 2, axis=1)), width


def test_sound_jumps_within_one_frame_and_one_hop_of_the_move(still_then_moving, tmp_path):
    out = tmp_path / "out.wav"
    result = device("run", "--camera", f"video:{still_then_moving}", "--audio", f"wav:{out}")
    assert result.returncode == 0, result.stderr
    audio, _ = read_wav(out)
    assert len(audio) == (STILL_FRAMES + MOVING_FRAMES) * HOP

    move = STILL_FRAMES * HOP                         # first sample of the first moving frame
    # Blocks aligned so that one begins exactly at the move: no block straddles it.
    start = move % 64
    env, width = _envelope(audio[start:])
    still = env[HOP // width:(move - start) // width]  # after the first hop's start-up
    onset = start + np.flatnonzero(env > 4 * still.max() + 1e-4)[0] * width
    assert move <= onset < move + 2 * HOP             # after the move, within frame + hop
    # and it stays up: at least 12 dB over standing still, as in test_engine
    assert env[(move - start + 2 * HOP) // width:].mean() > 4 * still.mean()


def test_the_measurement_is_repeatable_to_the_sample(still_then_moving, tmp_path):
    runs = []
    for i in range(2):
        out = tmp_path / f"{i}.wav"
        assert device("run", "--camera", f"video:{still_then_moving}",
                      "--audio", f"wav:{out}").returncode == 0
        runs.append(out.read_bytes())
    assert runs[0] == runs[1]

"""On the box itself: the real camera, sound card and pins."""

import time

import numpy as np
import pytest

from device.config import load_device_config


def test_pi_camera_gives_fresh_64x48_frames_at_its_rate():
    from device.camera.pi import PiCamera, pi_camera_available

    if not pi_camera_available():
        pytest.skip("no camera attached (libcamera lists none)")
    camera = PiCamera(fps=30)
    try:
        frames = [camera.read() for _ in range(61)]
    finally:
        camera.close()
    assert all(f.image.shape == (48, 64) and f.image.dtype == np.uint8 for f in frames)
    intervals = np.diff([f.timestamp for f in frames])
    assert np.median(intervals) == pytest.approx(1 / 30, rel=0.05)   # sensor timestamps
    assert intervals.min() > 0                                        # never a stale repeat


def test_sound_card_plays_a_second_without_underruns():
    from device.audio import sound_card_present
    from device.audio.alsa import AlsaSink
    from device.audio.stream import AudioStream

    if not sound_card_present():
        pytest.skip("no sound card")
    cfg = load_device_config()
    sink = AlsaSink("default", sample_rate=22050, period_size=cfg.audio.period_size,
                    periods=cfg.audio.periods)
    stream = AudioStream(sink, hop_samples=735, margin_ms=cfg.audio.margin_ms, volume=0.2)
    stream.start()
    t = np.arange(735) / 22050
    for i in range(30):
        stream.push((0.3 * np.sin(2 * np.pi * 441 * (t + i * 735 / 22050))).astype(np.float32))
        time.sleep(1 / 30)
    stream.stop()
    assert stream.stats.underruns == 0


def test_buttons_on_real_pins_can_be_claimed():
    from device.controls import Controls

    cfg = load_device_config()
    controls = Controls(cfg.controls, on_record_toggle=lambda: None,
                        on_record_delete_last=lambda: None, on_next_model=lambda: None)
    try:
        assert not controls.simulated
        controls.set_state("playing")
    finally:
        controls.close()

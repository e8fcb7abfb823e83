"""Audio out through the real ALSA library (a file device over null) and WAV."""

import numpy as np
import pytest

from device.audio import open_sink, to_int16
from device.audio.wav import WavSink, read_wav
from device.errors import AudioError


def _stream(n_hops=50, hop=735):
    t = np.arange(n_hops * hop) / 22050
    return (0.6 * np.sin(2 * np.pi * 330 * t) * np.linspace(0, 1.2, len(t))).astype(np.float32)


def test_alsa_plays_exactly_the_stream(alsa_file_device):
    device, raw = alsa_file_device
    stream = _stream()
    sink = open_sink(f"alsa:{device}", sample_rate=22050, period_size=256, periods=4)
    for hop in stream.reshape(-1, 735):
        sink.write(hop)
    sink.close()
    written = np.frombuffer(raw.read_bytes(), "<i2")
    assert np.array_equal(written, to_int16(stream))   # every sample, clipping included


def test_wav_sink_holds_the_same_samples(tmp_path):
    stream = _stream()
    sink = WavSink(tmp_path / "x.wav", sample_rate=22050)
    sink.write(stream)
    sink.close()
    audio, rate = read_wav(tmp_path / "x.wav")
    assert rate == 22050
    assert np.array_equal(to_int16(audio), to_int16(stream))


def test_to_int16_clips_instead_of_wrapping():
    assert list(to_int16(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]))) == [-32768, -32767, 0, 32767, 32767]


def test_missing_alsa_device_is_one_clear_error(alsa_file_device):
    with pytest.raises(AudioError, match="ALSA device 'nosuchcard': cannot open for playback"):
        open_sink("alsa:nosuchcard", sample_rate=22050)


def test_bad_audio_spec_is_refused():
    with pytest.raises(AudioError, match="expected 'auto', 'alsa', 'alsa:DEVICE' or 'wav:PATH'"):
        open_sink("speaker", sample_rate=22050)


def test_a_device_whose_writes_keep_failing_ends_playback(tmp_path, monkeypatch):
    """A device that fails again and again (a file PCM piping to a process that has
    gone: every third write gives EIO) is not an underrun to count for ever: the
    sink gives up with one AudioError, so the box knows it has no sound."""
    pytest.importorskip("alsaaudio")
    conf = tmp_path / "asound.conf"
    conf.write_text('pcm.gone {\n  type file\n  slave.pcm { type null }\n'
                    '  file "|/bin/sh -c \'exit 1\'"\n  format "raw"\n}\n')
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    sink = open_sink("alsa:gone", sample_rate=22050, period_size=128, periods=2)
    with pytest.raises(AudioError, match="ALSA device gone: playback failed"):
        for _ in range(5000):
            sink.write(np.zeros(128, np.float32))
    assert sink.underruns < 4

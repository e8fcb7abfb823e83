"""AudioStream: gap-free playback behind a ring buffer, and ALSA underrun recovery.

Most tests use a recording stand-in sink at 8 kHz with 10 ms hops; one plays
through the real libasound code path (a file device over null) and compares the
bytes written with what was pushed.
"""

import errno
import logging
import threading
import time

import numpy as np
import pytest

from device.audio import open_sink, to_int16
from device.audio.stream import AudioStream
from device.errors import AudioError

SR = 8000
HOP = 80


class RecordingSink:
    """Keeps a copy of every block (the stream reuses its buffer)."""

    def __init__(self, sample_rate=SR, period_size=None, fail_on_write=None, error=None):
        self.sample_rate = sample_rate
        self.name = "recording sink"
        if period_size is not None:
            self.period_size = period_size
        self.blocks = []
        self.closed = False
        self._fail_on_write, self._error = fail_on_write, error
        self.gate = threading.Event()
        self.gate.set()
        self.writing = False
        self.closed_during_write = False

    def write(self, block):
        self.writing = True
        try:
            if self._fail_on_write is not None and len(self.blocks) + 1 >= self._fail_on_write:
                raise self._error
            self.gate.wait()   # a stalled device when cleared
            self.blocks.append(block.copy())
        finally:
            self.writing = False

    def close(self):
        self.closed_during_write |= self.writing
        self.closed = True

    @property
    def output(self):
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)


def sine(n, freq=97.0, amp=0.8, phase=0.0, sr=SR):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr + phase)).astype(np.float32)


def wait_until(condition, timeout=3.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def feed(stream, signal, *, keep_hops=10, hop=HOP):
    """Push ``signal`` hop by hop as a model would, keeping the ring part full."""
    for h in signal.reshape(-1, hop):
        wait_until(lambda: stream.stats.queued_samples <= keep_hops * hop,
                   what="the audio thread to take audio")
        assert stream.push(h)


def fade_samples(stream_fade_ms=30.0, sr=SR):
    return round(stream_fade_ms * sr / 1000)


def test_steady_feeding_plays_every_sample_in_order():
    sink = RecordingSink()
    x = sine(40 * HOP)
    # 100 ms of prefill, so a loaded test machine cannot starve the stream at the start.
    stream = AudioStream(sink, hop_samples=HOP, capacity_hops=40, prefill_hops=10, volume=1.0)
    stream.start()
    # Trailing silence keeps the ring from running dry before stop() is called.
    feed(stream, np.concatenate([x, np.zeros(20 * HOP, np.float32)]), keep_hops=30)
    wait_until(lambda: stream.stats.played_samples >= len(x), what="the signal to play")
    stream.stop()

    y, f = sink.output, fade_samples()
    assert np.array_equal(y[f:len(x)], x[f:])          # exact, in order, after the fade-in
    ramp = np.arange(1, f + 1) / f
    assert np.allclose(y[:f], x[:f] * ramp, atol=1e-6)  # the fade-in itself
    stats = stream.stats
    assert stats.late_blocks == 0 and stats.dropped_hops == 0
    assert stats.played_samples == len(y)
    assert sink.closed


def test_starving_fades_out_without_a_click_and_fades_back_in(caplog):
    # Blocks of 64 against hops of 80: the ring runs dry in the middle of a block.
    sink = RecordingSink(period_size=64)
    first = sine(30 * HOP)
    second = sine(50 * HOP, phase=1.0)   # 30 hops checked, the rest keeps the ring fed
    checked = 30 * HOP
    assert abs(first[-1]) > 0.3 and abs(second[0]) > 0.3   # a cut here would click
    # A deep ring, kept well filled, and 100 ms of prefill, so that a loaded test
    # machine does not starve the stream anywhere but where the test does.
    stream = AudioStream(sink, hop_samples=HOP, capacity_hops=60, prefill_hops=10, volume=1.0)
    with caplog.at_level(logging.WARNING, logger="device.audio.stream"):
        stream.start()
        feed(stream, first, keep_hops=40)
        wait_until(lambda: stream.stats.queued_samples == 0, what="the ring to run dry")
        dry_at = stream.stats.played_samples
        wait_until(lambda: stream.stats.played_samples >= dry_at + 0.1 * SR,
                   what="0.1 s of starving")
        late_while_starved = stream.stats.late_blocks
        resumed_at = stream.stats.played_samples
        feed(stream, second, keep_hops=40)
        wait_until(lambda: stream.stats.played_samples >= resumed_at + checked + 10 * HOP,
                   what="the second part to play")
        stream.stop()

    y, f = sink.output, fade_samples()
    # No jump at the cut, the return or the stop: at most the signal's own steepest
    # step plus what a 30 ms fade adds per sample.
    assert np.abs(np.diff(y)).max() <= np.abs(np.diff(first)).max() + 0.8 / f + 1e-6
    assert np.array_equal(y[f:len(first)], first[f:])
    tail = y[len(first):len(first) + f]                     # the last sample, held and faded
    assert np.allclose(tail, first[-1] * (1 - np.arange(1, f + 1) / f), atol=1e-6)
    assert late_while_starved > 0
    assert "fell behind" in caplog.text

    back = len(first) + f + np.flatnonzero(y[len(first) + f:])[0]   # where sound returns
    assert back - len(first) >= 0.1 * SR * 0.9                        # after the silence
    ramp = np.arange(1, f + 1) / f
    assert np.allclose(y[back:back + f], second[:f] * ramp, atol=1e-6)  # fades back in
    assert np.array_equal(y[back + f:back + checked], second[f:checked])


def test_push_never_blocks_on_a_stalled_sink_and_stop_keeps_its_deadline(caplog):
    sink = RecordingSink()
    sink.gate.clear()
    stream = AudioStream(sink, hop_samples=HOP, capacity_hops=8)
    stream.start()
    hop = sine(HOP)
    assert stream.push(hop) and stream.push(hop)
    wait_until(lambda: sink.writing, what="the first write")   # the audio thread is stuck

    took, results = [], []

    def producer():                 # in a thread of its own, so a blocking push fails the test
        for _ in range(200):
            t0 = time.perf_counter()
            results.append(stream.push(hop))
            took.append(time.perf_counter() - t0)

    pushing = threading.Thread(target=producer, daemon=True)
    pushing.start()
    pushing.join(2.0)
    assert not pushing.is_alive(), "push() blocked on a stalled sink"
    assert max(took) < 0.05 and sum(took) < 0.5
    accepted = sum(results)
    stats = stream.stats
    assert stats.dropped_hops == 200 - accepted > 190
    assert stats.queued_samples == stats.max_queued_samples <= 8 * HOP

    with caplog.at_level(logging.WARNING, logger="device.audio.stream"):
        t0 = time.monotonic()
        stream.stop()
        assert time.monotonic() - t0 < 2.5
    assert "did not stop within 2.0 s" in caplog.text
    assert not sink.closed          # not closed under a write that has not returned
    sink.gate.set()
    wait_until(lambda: sink.closed, what="the audio thread to close the sink")
    assert not sink.closed_during_write
    stream.stop()                   # safe to call twice
    assert stream.push(hop) is False


def test_audio_dropped_on_a_full_ring_is_crossfaded_not_clicked():
    sink = RecordingSink()
    sink.gate.clear()
    x = sine(40 * HOP)
    hops = x.reshape(-1, HOP)
    stream = AudioStream(sink, hop_samples=HOP, capacity_hops=8, volume=1.0)
    stream.start()
    stream.push(hops[0]), stream.push(hops[1])
    wait_until(lambda: sink.writing, what="the first write")
    accepted = [stream.push(h) for h in hops[2:15]]
    assert not all(accepted)
    gap = accepted.index(False) + 2
    resume = 15
    assert abs(x[gap * HOP - 1] - x[resume * HOP]) > 0.3   # the join, unfaded, would click
    sink.gate.set()
    feed(stream, x[resume * HOP:], keep_hops=5)
    wait_until(lambda: stream.stats.played_samples >= (gap + 30 - resume) * HOP,
               what="the rest to play")
    stream.stop()
    assert stream.stats.dropped_hops == accepted.count(False)
    f = fade_samples()
    assert np.abs(np.diff(sink.output)).max() <= np.abs(np.diff(x)).max() + 0.8 / f + 1e-6


def test_limiter_tames_a_2x_overdriven_sine_without_clipping_it():
    sink = RecordingSink()
    x = sine(30 * HOP, amp=2.0)
    stream = AudioStream(sink, hop_samples=HOP, capacity_hops=40, volume=1.0, fade_ms=1.0,
                         limiter_threshold=0.9)
    for h in x.reshape(-1, HOP):
        stream.push(h)
    stream.start()
    wait_until(lambda: stream.stats.played_samples >= len(x), what="the sine to play")
    stream.stop()

    y = sink.output[:len(x)]
    assert np.abs(y).max() <= 1.0
    # Under the threshold after the first block, give or take the 1 ms attack
    # ramp when a block's sampled peak comes a little closer to 2.0.
    assert np.abs(y[HOP:]).max() <= 0.9 + 1e-3
    assert np.mean(np.abs(y[HOP:]) > 0.9 + 1e-6) < 0.01
    # A gain, not a clipper: the waveform is the sine scaled by 0.9 / 2.
    assert np.abs(y[HOP:] - x[HOP:] * 0.45).max() < 2e-3


def test_wild_model_output_never_reaches_the_speaker():
    sink = RecordingSink()
    hop = sine(HOP, amp=0.5)
    wild = hop.copy()
    wild[[5, 20, 40]] = [np.nan, np.inf, 1e6]
    stream = AudioStream(sink, hop_samples=HOP, capacity_hops=10, volume=1.0, fade_ms=1.0)
    for h in [hop, hop, wild, hop, hop]:
        stream.push(h)
    stream.start()
    wait_until(lambda: stream.stats.played_samples >= 5 * HOP, what="the hops to play")
    stream.stop()
    y = sink.output
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0


def test_volume_changes_glide_instead_of_stepping():
    sink = RecordingSink()
    level = np.full(40 * HOP, 0.5, np.float32)   # a constant shows any zipper step at once
    stream = AudioStream(sink, hop_samples=HOP, capacity_hops=40, prefill_hops=10, volume=1.0)
    stream.start()
    feed(stream, level[:15 * HOP], keep_hops=30)
    stream.set_volume(0.2)
    feed(stream, level[15 * HOP:], keep_hops=30)
    wait_until(lambda: stream.stats.played_samples >= len(level), what="the level to play")
    stream.stop()
    y = sink.output[:len(level)]
    # Smoothed: at most 0.002 a sample here. A step would be 0.4; even a ramp
    # across one block (10 ms) would be 0.005.
    assert np.abs(np.diff(y)).max() < 0.003
    assert y[-1] == pytest.approx(0.1, abs=1e-4)
    with pytest.raises(ValueError, match="volume must be between 0 and 1"):
        stream.set_volume(1.5)


def test_an_error_in_the_sink_is_raised_from_push():
    sink = RecordingSink(fail_on_write=3, error=AudioError("recording sink: unplugged"))
    stream = AudioStream(sink, hop_samples=HOP)
    stream.start()
    with pytest.raises(AudioError, match="unplugged"):
        for _ in range(500):
            stream.push(sine(HOP))
            time.sleep(0.005)
    with pytest.raises(AudioError, match="unplugged"):
        stream.push(sine(HOP))        # a dead stream keeps saying so
    stream.stop()                     # already reported: not raised again
    assert sink.closed


def test_an_unexpected_error_in_the_sink_is_raised_from_stop_as_audio_error():
    sink = RecordingSink(fail_on_write=1, error=RuntimeError("driver bug"))
    stream = AudioStream(sink, hop_samples=HOP)
    stream.push(sine(HOP)), stream.push(sine(HOP))
    stream.start()
    wait_until(lambda: sink.closed, what="the audio thread to give up")
    with pytest.raises(AudioError, match="RuntimeError: driver bug"):
        stream.stop()


def test_buffer_latency_counts_the_ring_and_the_device_buffer():
    sink = RecordingSink(period_size=64)
    sink.periods = 4
    stream = AudioStream(sink, hop_samples=HOP)
    for _ in range(3):
        stream.push(sine(HOP))
    assert stream.buffer_latency_s == pytest.approx((3 * HOP + 64 * 4) / SR)
    stream.stop()                     # never started: closes the sink
    assert sink.closed


def test_alsa_file_device_receives_exactly_what_the_stream_played(alsa_file_device):
    device, raw = alsa_file_device
    sr, hop = 22050, 735
    x = sine(12 * hop, freq=330, amp=0.6, sr=sr)
    sink = open_sink(f"alsa:{device}", sample_rate=sr, period_size=256, periods=4)
    # ALSA's null device takes data at once, so the stream keeps time itself here.
    stream = AudioStream(sink, hop_samples=hop, capacity_hops=30, prefill_hops=4, volume=1.0,
                         pace=True)
    assert stream.block_samples == sink.period_size
    stream.start()
    feed(stream, np.concatenate([x, np.zeros(10 * hop, np.float32)]), hop=hop)
    wait_until(lambda: stream.stats.played_samples >= len(x), what="the signal to play")
    stream.stop()

    written = np.frombuffer(raw.read_bytes(), "<i2")
    assert len(written) == stream.stats.played_samples
    f = fade_samples(sr=sr)
    assert np.array_equal(written[f:len(x)], to_int16(x[f:]))
    ramp = np.arange(1, f + 1) / f
    assert np.abs(written[:f].astype(int) - to_int16(x[:f] * ramp)).max() <= 1
    assert stream.stats.underruns == 0


class FlakyPcm:
    """An ALSA PCM that fails the chosen write calls the way pyalsaaudio 0.11 does."""

    def __init__(self, pcm, faults):
        self._pcm, self._faults, self.calls, self.drops = pcm, faults, 0, 0

    def write(self, data):
        self.calls += 1
        fault = self._faults.get(self.calls)
        if fault == "xrun":
            return -errno.EPIPE        # pyalsaaudio has prepared the PCM; nothing was written
        if fault is not None:
            raise fault
        return self._pcm.write(data)

    def drop(self):
        self.drops += 1
        return self._pcm.drop()

    def __getattr__(self, name):
        return getattr(self._pcm, name)


def test_alsa_sink_recovers_from_underruns_and_counts_them(alsa_file_device, caplog):
    alsaaudio = pytest.importorskip("alsaaudio")
    device, raw = alsa_file_device
    x = sine(10 * 735, freq=330, amp=0.6, sr=22050)
    sink = open_sink(f"alsa:{device}", sample_rate=22050)
    flaky = FlakyPcm(sink._pcm, {2: "xrun", 5: alsaaudio.ALSAAudioError("Streams pipe error")})
    sink._pcm = flaky
    with caplog.at_level(logging.WARNING, logger="device.audio.alsa"):
        for h in x.reshape(-1, 735):
            sink.write(h)
    sink.close()
    assert np.array_equal(np.frombuffer(raw.read_bytes(), "<i2"), to_int16(x))   # nothing lost
    assert sink.underruns == 2 and flaky.drops == 1
    assert "underrun" in caplog.text


def test_alsa_sink_gives_up_on_a_device_that_stays_broken(alsa_file_device):
    alsaaudio = pytest.importorskip("alsaaudio")
    device, _ = alsa_file_device
    sink = open_sink(f"alsa:{device}", sample_rate=22050)
    gone = alsaaudio.ALSAAudioError("No such device")
    sink._pcm = FlakyPcm(sink._pcm, {1: gone, 2: gone})
    with pytest.raises(AudioError, match="playback failed \\(No such device\\)"):
        sink.write(np.zeros(735, np.float32))
    sink._pcm = FlakyPcm(sink._pcm._pcm, {1: "xrun", 2: "xrun"})
    with pytest.raises(AudioError, match="underran twice"):
        sink.write(np.zeros(735, np.float32))
    sink.close()


def test_the_config_clock_chooses_what_keeps_the_sound_to_time(alsa_file_device):
    """An ALSA device with no clock of its own (the file PCM over null) plays in
    real time with `audio.clock: system`; `auto` trusts an ALSA device's writes."""
    import time

    from device.config import DeviceConfig, with_overrides

    device, raw = alsa_file_device
    sr, hop = 22050, 735
    chosen = {}
    for clock in ("auto", "card", "system"):
        audio = with_overrides(DeviceConfig(), {"audio.clock": clock}).audio
        sink = open_sink(f"alsa:{device}", sample_rate=sr, period_size=128, periods=2)
        chosen[clock] = AudioStream.from_config(sink, audio, hop_samples=hop).pace
        sink.close()
    assert chosen == {"auto": False, "card": False, "system": True}

    audio = with_overrides(DeviceConfig(), {"audio.clock": "system"}).audio
    sink = open_sink(f"alsa:{device}", sample_rate=sr, period_size=128, periods=2)
    stream = AudioStream.from_config(sink, audio, hop_samples=hop)
    stream.start()
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        stream.push(sine(hop, sr=sr))
        time.sleep(hop / sr)
    stream.stop()
    played_s = len(raw.read_bytes()) / 2 / sr
    assert 0.7 < played_s < 1.5, f"{played_s:.2f} s of sound written in 1 s"

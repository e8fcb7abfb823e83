"""The box as a MIDI source: a show playing the synthetic dancer into the ALSA file
device hands its frames to the MIDI service, whose messages are read back with mido
(an independent MIDI parser). Where the kernel has an ALSA sequencer
(/dev/snd/seq) the messages also travel through it to a python-rtmidi input;
where it has none that test skips and says so, and the bytes are what is tested.
The unit that runs the service is judged by systemd's own ``systemd-analyze``."""

import re
import subprocess
import sys
import threading
import time

import mido
import numpy as np
import pytest

from device.config import MidiConfig
from device.engine import MotionWindow
from device.midi import (CONTROLLERS, HOLD_FRAMES, REFERENCE, SEQUENCER, MidiMapper, MidiService,
                         SequencerOut, serve)
from device.notes import SCALE, NotesVoice
from device.publish import FRAME_MAGIC, FrameData, FramePublisher
from tests.conftest import ROOT, exposure, one_line_error, start_show, until, verify_quietly
from tests.test_notes import HEIGHT, WIDTH, frame, voice_of

UNIT = ROOT / "systemd" / "dancesampler-midi.service"


class Kept:
    """Where the service's messages go: kept as mido messages, in order."""

    def __init__(self):
        self.messages: list[mido.Message] = []

    def send(self, message: bytes) -> None:
        self.messages.append(mido.Message.from_bytes(list(message)))

    def of(self, kind: str) -> list[mido.Message]:
        return [m for m in list(self.messages) if m.type == kind]

    def controller(self, number: int) -> list[int]:
        return [m.value for m in self.of("control_change") if m.control == number]


def frame_data(vector: np.ndarray, gain: float = 1.0, level_db: float = -20.0,
               number: int = 0) -> FrameData:
    return FrameData(number, gain, level_db, WIDTH, vector.astype(np.float32))


def test_a_show_s_frames_become_controllers_and_notes_on_the_scale(
        tmp_path, default_bundle, alsa_file_device):
    device, raw = alsa_file_device
    frames = tmp_path / "midi" / "frames.sock"
    performance, cfg, ctl, stop, thread = start_show(
        tmp_path, default_bundle, device,
        {"midi.enabled": True, "midi.channel": 3, "web.listen": ""},   # MIDI alone
        midi_frames=frames)
    kept = Kept()
    service = MidiService(cfg.midi, frames=frames, out=kept).start()
    try:
        until(lambda: service.frames >= 150 and len(kept.of("note_on")) >= 4,
              "5 s of frames and four notes", seconds=30)
    finally:
        service.close()
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and not frames.exists()
    assert raw.stat().st_size > 0, "no sound reached the ALSA device"

    assert {m.channel for m in kept.messages} == {2}   # channel 3, counted from 0 on the wire
    # Each 14-bit controller: the coarse value, then its fine partner 32 above.
    for c in CONTROLLERS:
        coarse = kept.controller(c.number)
        assert len(set(coarse)) > 1, f"{c.name} never moved"
        if c.fine:
            assert len(kept.controller(c.number + 32)) == len(coarse)
    pairs = [(a.control, b.control) for a, b in zip(kept.messages, kept.messages[1:])
             if a.type == b.type == "control_change" and a.control in (1, 16, 17)]
    assert pairs and all(b == a + 32 for a, b in pairs)
    # Notes: on the C major pentatonic scale; each struck note is released, and
    # the service's last word is all notes off.
    ons, offs = kept.of("note_on"), kept.of("note_off")
    assert {m.note % 12 for m in ons} <= set(SCALE)
    assert all(1 <= m.velocity <= 127 for m in ons)
    assert sorted(m.note for m in ons) == sorted(m.note for m in offs)
    last = kept.messages[-1]
    assert last.type == "control_change" and last.control == 123


def test_a_known_frame_gives_known_bytes_and_only_changes_are_sent():
    mapper = MidiMapper(channel=10, notes=False)
    # All the motion in the right-most column and the top row, at four times the
    # reference: quantity, across and height all at their top.
    vector = frame(4 * REFERENCE, row=0, col=WIDTH - 1)
    sent = mapper.frame(frame_data(vector, level_db=0.0))
    assert sent == [bytes([0xB9, 1, 127]), bytes([0xB9, 33, 127]),
                    bytes([0xB9, 16, 127]), bytes([0xB9, 48, 127]),
                    bytes([0xB9, 17, 127]), bytes([0xB9, 49, 127]),
                    bytes([0xB9, 11, 127])]
    assert mapper.frame(frame_data(vector, level_db=0.0)) == []
    # Half the motion is one doubling down: 1 - 1/8 of the controller's span; the
    # gain is applied (half the raw motion at gain 2 is the same frame again).
    half = mapper.frame(frame_data(vector / 2, level_db=0.0))
    code = round((1 - 1 / 8) * 16383)
    assert half == [bytes([0xB9, 1, code >> 7]), bytes([0xB9, 33, code & 0x7F])]
    assert mapper.frame(frame_data(vector / 4, gain=2.0, level_db=0.0)) == []
    # Stillness: quantity 0, the centroids in the middle; -60 dBFS and below: 0.
    still = mapper.frame(frame_data(np.zeros(WIDTH + HEIGHT), level_db=-90.0))
    middle = round(0.5 * 16383)
    assert still == [bytes([0xB9, 1, 0]), bytes([0xB9, 33, 0]),
                     bytes([0xB9, 16, middle >> 7]), bytes([0xB9, 48, middle & 0x7F]),
                     bytes([0xB9, 17, middle >> 7]), bytes([0xB9, 49, middle & 0x7F]),
                     bytes([0xB9, 11, 0])]


def test_the_notes_sent_are_the_notes_voice_s_own(tmp_path):
    from device.bundle import read_bundle
    from device.corpus import VoiceShape
    from tests.conftest import DEFAULT_BUNDLE

    like = VoiceShape.of(read_bundle(DEFAULT_BUNDLE).manifest)
    voice: NotesVoice = voice_of(like, tmp_path)
    mapper = MidiMapper(channel=1)
    rng = np.random.default_rng(3)
    vectors = [frame(0.01 + 0.01 * np.sin(t / 3), int(rng.integers(0, HEIGHT)),
                     int(rng.integers(0, WIDTH))) * (t % 90 < 60) for t in range(240)]
    window = MotionWindow(like.window_frames, WIDTH + HEIGHT)
    kept, held_at_rest = Kept(), []
    for t, v in enumerate(vectors):
        voice(window.push(v))
        for message in mapper.frame(frame_data(v, number=t)):
            kept.send(message)
        if t % 90 == 60 + HOLD_FRAMES + 5:   # well into a still stretch
            ons = sum(m.type == "note_on" for m in kept.messages)
            held_at_rest.append(ons - sum(m.type == "note_off" for m in kept.messages))
    # Each note the voice plays is sent, at its velocity, and the lower part with it.
    played = [(note, max(1, round(v * 127))) for _, note, v in voice.onsets]
    ons = kept.of("note_on")
    assert len(played) > 20 and len(ons) == 2 * len(voice.onsets) <= 128
    assert [(m.note, m.velocity) for m in ons[0::2]] == played
    assert all(low.note < high.note and low.velocity == high.velocity
               for high, low in zip(ons[0::2], ons[1::2]))
    # Still for longer than HOLD_FRAMES: nothing held.
    assert held_at_rest == [0, 0]


def test_junk_on_the_frames_socket_is_counted_and_frames_still_go_out(tmp_path):
    frames = tmp_path / "frames.sock"
    kept = Kept()
    service = MidiService(MidiConfig(enabled=True), frames=frames, out=kept).start()
    try:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as junk:
            for data in (b"", b"DSF1", b"nonsense", FRAME_MAGIC + bytes(40), b"DSS1[1]"):
                junk.sendto(data, str(frames))
        until(lambda: service.tally.counts["malformed frame datagrams"] >= 4, "junk counted")
        publisher = FramePublisher(frames)
        vector = frame(0.01, row=10)
        publisher.frame(vector, WIDTH, 1.0, np.zeros(735, np.float32), {"model": "m"})
        until(lambda: service.frames == 1 and kept.controller(1), "the frame sent on")
        publisher.close()
    finally:
        service.close()
    assert not frames.exists()


def test_with_midi_off_it_says_so_and_exits_and_with_no_sequencer_it_is_one_line(tmp_path):
    assert serve(MidiConfig(), threading.Event()) == 0
    config = tmp_path / "device.yaml"
    config.write_text("midi:\n  enabled: true\n")
    result = subprocess.run([sys.executable, "-m", "device", "midi", "--frames",
                             str(tmp_path / "frames.sock")], capture_output=True, text=True,
                            cwd=ROOT, env={"DANCESAMPLER_CONFIG": str(config), "PATH": ""},
                            timeout=60)
    if SEQUENCER.exists():
        pytest.skip("this kernel has an ALSA sequencer: the service would run")
    one_line_error(result, "no ALSA sequencer", str(SEQUENCER))
    config.write_text("midi:\n  channel: 0\n")
    result = subprocess.run([sys.executable, "-m", "device", "midi"], capture_output=True,
                            text=True, cwd=ROOT, env={"DANCESAMPLER_CONFIG": str(config)},
                            timeout=60)
    one_line_error(result, "midi.channel", "from 1 to 16")


@pytest.mark.skipif(not SEQUENCER.exists(),
                    reason=f"no ALSA sequencer here ({SEQUENCER} is missing): the MIDI "
                           "bytes are tested, not their way through the sequencer")
def test_through_the_alsa_sequencer_a_reader_gets_the_messages():
    import rtmidi

    out = SequencerOut("dancesampler-test")
    reader = rtmidi.MidiIn(rtmidi.API_LINUX_ALSA, name="reader")
    try:
        ports = reader.get_ports()
        index = next(i for i, name in enumerate(ports) if "dancesampler-test" in name)
        reader.open_port(index)
        time.sleep(0.2)
        mapper = MidiMapper(channel=1)
        sent = mapper.frame(frame_data(frame(4 * REFERENCE, row=0, col=WIDTH - 1), level_db=0))
        for message in sent:
            out.send(message)
        got, deadline = [], time.monotonic() + 5
        while len(got) < len(sent) and time.monotonic() < deadline:
            item = reader.get_message()
            if item is None:
                time.sleep(0.01)
            else:
                got.append(bytes(item[0]))
        assert got == sent
    finally:
        reader.close_port()
        out.close()


def test_unit_file_verifies(tmp_path):
    execstart = verify_quietly(UNIT, tmp_path)
    assert re.search(r"^ExecStart=\S+ -m device midi$", UNIT.read_text(), re.M), execstart


def test_unit_file_exposure_is_at_most_2_and_it_has_no_network():
    level, output = exposure(UNIT)
    assert level <= 2.0, output
    text = UNIT.read_text()
    assert re.search(r"^PrivateNetwork=yes$", text, re.M)
    assert re.search(r"^RestrictAddressFamilies=AF_UNIX$", text, re.M)
    assert re.search(r"^DeviceAllow=/dev/snd/seq rw$", text, re.M)

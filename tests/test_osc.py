"""OSC out and in, for real: a show playing the synthetic dancer into the ALSA file
device hands its frames to the OSC service, which sends them over loopback UDP to
a python-osc server; a python-osc client sends commands that go through the
control channel and start a real take. The unit that runs it is judged by
systemd's own ``systemd-analyze`` where it exists."""

import logging
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

from device.config import OscConfig, load_device_config, with_overrides
from device.control import request
from device.errors import ConfigError
from device.osc import WEK_INPUTS, OscError, OscService, wek_inputs
from device.publish import (BOX_RUNTIME_DIR, FRAME_HEADER, FRAME_MAGIC, STATE_MAGIC, FrameData,
                            FramePublisher, decode)
from tests.conftest import ROOT, exposure, one_line_error, start_show, until, verify_quietly

UNIT = ROOT / "systemd" / "dancesampler-osc.service"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Heard:
    """A python-osc UDP server on loopback that keeps every message, in order."""

    def __init__(self):
        self.messages: list[tuple[str, list]] = []
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(lambda address, *args: self.messages.append(
            (address, list(args))))
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def at(self, address: str) -> list[list]:
        return [args for a, args in list(self.messages) if a == address]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def heard():
    server = Heard()
    yield server
    server.close()


@pytest.fixture
def show_factory(tmp_path, default_bundle, alsa_file_device):
    """Start a show (``conftest.start_show``) with ``osc.*`` overrides; stopped and
    checked at the end."""
    device, raw = alsa_file_device
    running = []

    def start(**osc):
        frames = tmp_path / "osc" / "frames.sock"
        performance, cfg, ctl, stop, thread = start_show(
            tmp_path, default_bundle, device,
            {f"osc.{key}": value for key, value in osc.items()}, frames=frames)
        running.append((stop, thread))
        return performance, cfg, ctl, frames

    yield start
    for stop, thread in running:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()
    assert raw.stat().st_size > 0, "no sound reached the ALSA device"


def test_each_frame_goes_out_as_wekinator_inputs_and_the_box_s_own_messages(show_factory,
                                                                            heard):
    performance, cfg, ctl, frames = show_factory(send_to=f"127.0.0.1:{heard.port}",
                                                 motiongram=True)
    assert performance.publisher is not None
    service = OscService(cfg.osc, frames=frames, control=ctl).start()
    try:
        until(lambda: len(heard.at("/wek/inputs")) >= 60, "60 frames of /wek/inputs")
        until(lambda: heard.at("/dancesampler/model"), "the model's name")
        assert heard.at("/dancesampler/model")[0] == ["default", "model"]

        # A take started and stopped through the control channel is announced.
        assert request("record", ctl)["ok"]
        until(lambda: heard.at("/dancesampler/take"), "the take's start")
        started = heard.at("/dancesampler/take")[0]
        assert started[0] == "started"
        assert (performance.recorder.take_path.name == started[1])
        assert request("stop", ctl)["ok"]
        until(lambda: len(heard.at("/dancesampler/take")) >= 2, "the take's end")
        assert heard.at("/dancesampler/take")[1] == ["stopped", started[1]]
    finally:
        service.close()

    inputs = np.array(heard.at("/wek/inputs"))
    assert inputs.shape[1] == len(WEK_INPUTS) == 17 and np.isfinite(inputs).all()
    assert inputs[:, 0].max() > 0, "the dancer never moved"
    assert ((inputs[:, 1:3] >= 0) & (inputs[:, 1:3] <= 1)).all()     # centroids
    # The 8 column strips and the 6 row strips each average to the quantity.
    assert np.allclose(inputs[:, 3:11].mean(axis=1), inputs[:, 0], rtol=1e-4, atol=1e-7)
    w, h = cfg.motiongram.width, cfg.motiongram.height
    grams = np.array(heard.at("/dancesampler/motiongram"))
    assert grams.shape[1] == w + h and (grams >= 0).all() and (grams <= 1).all()
    # Per frame, in this order: /wek/inputs, quantity, centroid, gain, level, the
    # factory model's latent, motiongram. Within each frame's group, the gained
    # quantity is the camera's times the gain, and the camera's is the mean of the
    # motiongram's columns.
    frames_heard, group = [], {}
    for address, args in heard.messages:
        if address == "/wek/inputs":
            group = {}
            frames_heard.append(group)
        group[address] = args
    per_frame = ["/wek/inputs", "/dancesampler/quantity", "/dancesampler/centroid",
                 "/dancesampler/gain", "/dancesampler/level", "/dancesampler/latent",
                 "/dancesampler/motiongram"]
    whole = [g for g in frames_heard if list(g) == per_frame]
    assert len(whole) >= 0.9 * len(frames_heard) >= 50
    assert all(len(g["/dancesampler/latent"]) == 16 for g in whole)
    for g in whole:
        quantity, gain = g["/dancesampler/quantity"][0], g["/dancesampler/gain"][0]
        assert g["/wek/inputs"][0] == pytest.approx(quantity * gain, rel=1e-4, abs=1e-7)
        assert quantity == pytest.approx(np.mean(g["/dancesampler/motiongram"][:w]),
                                         rel=1e-4, abs=1e-7)
    levels = np.array(heard.at("/dancesampler/level"))[:, 0]
    assert (levels <= 0).all() and levels.max() > -60, "the level of a silent show?"


@pytest.mark.slow
def test_a_model_that_gives_its_latent_sends_it_with_each_frame(tmp_path, tiny_bundle,
                                                                alsa_file_device, heard):
    """A model exported now gives its latent; each frame's comes after the level, as
    many floats as the bundle's latent_size, and moves as the dancer does."""
    from device.bundle import read_bundle

    device, _ = alsa_file_device
    frames = tmp_path / "osc" / "frames.sock"
    performance, cfg, ctl, stop, thread = start_show(
        tmp_path, tiny_bundle, device, {"osc.send_to": f"127.0.0.1:{heard.port}"},
        frames=frames)
    service = OscService(cfg.osc, frames=frames, control=ctl).start()
    try:
        until(lambda: len(heard.at("/dancesampler/latent")) >= 60, "60 frames of the latent")
    finally:
        service.close()
        stop.set()
        thread.join(10)
    size = read_bundle(tiny_bundle).manifest.latent_size
    latent = np.array(heard.at("/dancesampler/latent"))
    assert latent.shape[1] == size == 8 and np.isfinite(latent).all()
    assert np.ptp(latent, axis=0).max() > 0.1, "the latent never moved"
    addresses = [a for a, _ in heard.messages if a.startswith("/dancesampler/l")]
    assert addresses[:4] == ["/dancesampler/level", "/dancesampler/latent"] * 2


def test_the_show_plays_on_with_nobody_listening_and_a_late_service_learns_its_state(
        show_factory, heard):
    performance, cfg, ctl, frames = show_factory(send_to=f"127.0.0.1:{heard.port}")
    publisher = performance.publisher
    until(lambda: publisher.dropped >= 30, "frames dropped with no OSC service")
    assert publisher.sent == 0 and not frames.exists()
    playing = performance.engine.stats.frames

    service = OscService(cfg.osc, frames=frames, control=ctl).start()
    try:
        until(lambda: heard.at("/dancesampler/model"), "the model, from a late start")
        assert performance.engine.stats.frames > playing
    finally:
        service.close()
    assert not frames.exists(), "the frames socket was left behind"


def test_osc_commands_go_through_the_control_channel(show_factory):
    port = free_port()
    performance, cfg, ctl, frames = show_factory(listen=f"127.0.0.1:{port}",
                                                 allow="127.0.0.1")
    recorder = performance.recorder
    service = OscService(cfg.osc, frames=frames, control=ctl).start()
    client = SimpleUDPClient("127.0.0.1", port)
    try:
        client.send_message("/dancesampler/record", [])
        until(lambda: recorder.recording, "recording started by OSC")
        until(lambda: request("status", ctl)["state"] == "recording", "the box says so")
        client.send_message("/dancesampler/stop", 1.0)
        until(lambda: not recorder.recording, "the take stopped by OSC")
        take = recorder.wait()
        assert take.clean and take.frames > 0

        client.send_message("/dancesampler/volume", 0.25)
        client.send_message("/dancesampler/sensitivity", 2)
        client.send_message("/dancesampler/dynamics", 0.25)
        until(lambda: len(service.done) >= 5, "volume, sensitivity and dynamics answered")
        status = request("status", ctl)
        assert status["volume"] == 0.25 and status["sensitivity"] == 2.0
        assert status["dynamics"] == 0.25 and performance.engine.dynamics.depth == 0.25
        assert performance.stream is not None

        client.send_message("/dancesampler/voice", "b")
        until(lambda: performance.engine.bundle.path.name == "b.dsb", "voice b playing")
        client.send_message("/dancesampler/next-model", True)
        until(lambda: performance.engine.bundle.path.name == "a.dsb", "the next one, a")

        client.send_message("/dancesampler/delete-last", 0.0)   # a button's release
        client.send_message("/dancesampler/delete-last", 1.0)
        until(lambda: not take.path.exists(), "the last take deleted by OSC")
        until(lambda: service.done[-1][0] == "delete-last", "delete-last answered")
        assert [c for c, _, _ in service.done].count("delete-last") == 1
        assert all(reply["ok"] for _, _, reply in service.done)
    finally:
        service.close()
    assert sum(service.tally.counts.values()) == 0, service.tally.counts


def test_senders_not_allowed_and_bad_messages_are_counted_and_never_stop_it(
        show_factory, caplog):
    port = free_port()
    performance, cfg, ctl, frames = show_factory(listen=f"127.0.0.1:{port}",
                                                 allow="10.9.8.0/24")
    service = OscService(cfg.osc, frames=frames, control=ctl)
    service.tally.every_s = 3600.0   # one line at the first, the rest at the end
    client = SimpleUDPClient("127.0.0.1", port)
    counts = service.tally.counts
    with caplog.at_level(logging.WARNING, logger="device.osc"):
        service.start()
        try:
            client.send_message("/dancesampler/record", [])
            until(lambda: counts["messages from senders not allowed (osc.allow)"] == 1,
                  "the stranger counted")
            assert not performance.recorder.recording
            service._allow = OscService(OscConfig(allow="127.0.0.1"), frames=frames,
                                        control=ctl)._allow   # now let loopback in
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for junk in (b"", b"garbage", b"/dancesampler/record\0\0\0\0,i\0\0",
                         b"#bundle\0" + bytes(5), np.random.default_rng(1).bytes(300)):
                raw.sendto(junk, ("127.0.0.1", port))
            raw.close()
            client.send_message("/nowhere", 1.0)
            client.send_message("/dancesampler/volume", "loud")
            client.send_message("/dancesampler/volume", 7.0)
            client.send_message("/dancesampler/record", "now")
            until(lambda: counts["malformed packets"] == 5, "5 malformed packets")
            until(lambda: counts["messages with bad arguments"] == 3, "3 with bad arguments")
            assert counts["messages to unknown addresses"] == 1
            # It still does what it is asked.
            client.send_message("/dancesampler/record", [])
            until(lambda: performance.recorder.recording, "recording after the junk")
        finally:
            service.close()
    lines = [r.getMessage() for r in caplog.records if "osc: ignored" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0] == ("osc: ignored: messages from senders not allowed (osc.allow): 1 "
                        "(e.g. 127.0.0.1)")
    assert "malformed packets: 5 (e.g. 0 bytes from 127.0.0.1)" in lines[1]
    assert "messages to unknown addresses: 1 (e.g. /nowhere)" in lines[1]
    assert "messages with bad arguments: 3 (e.g. /dancesampler/volume: volume takes a " \
           "number from 0 to 1, not 'loud')" in lines[1]
    assert performance.engine.stats.frames > 0


def test_the_inputs_of_a_known_frame():
    """Motion only in the leftmost 8 columns and the top 8 rows, gain 2."""
    motion = np.zeros(64 + 48, np.float32)
    motion[:8] = 0.5
    motion[64:72] = 0.25
    inputs = dict(zip(WEK_INPUTS, wek_inputs(FrameData(7, 2.0, -20.0, 64, motion))))
    assert inputs["quantity"] == pytest.approx(2.0 * 0.5 * 8 / 64)
    assert inputs["centroid_x"] == pytest.approx(3.5 / 63)
    assert inputs["centroid_y"] == pytest.approx(3.5 / 47)
    assert inputs["columns_1"] == pytest.approx(1.0) and inputs["rows_1"] == pytest.approx(0.5)
    assert all(inputs[f"columns_{i}"] == 0 for i in range(2, 9))
    assert all(inputs[f"rows_{i}"] == 0 for i in range(2, 7))
    still = wek_inputs(FrameData(8, 1.0, -120.0, 64, np.zeros(112, np.float32)))
    assert still[:3] == [0.0, 0.5, 0.5] and not any(still[3:])


def test_junk_on_the_frames_socket_is_counted_and_frames_still_go_out(tmp_path, heard):
    frames = tmp_path / "frames.sock"
    service = OscService(OscConfig(send_to=f"127.0.0.1:{heard.port}"), frames=frames,
                         control=tmp_path / "ctl.sock").start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as local:
            for junk in (b"", b"hello", FRAME_MAGIC + bytes(FRAME_HEADER.size),
                         STATE_MAGIC + b"[1, 2]", STATE_MAGIC + b"{not json"):
                local.sendto(junk, str(frames))
        until(lambda: service.tally.counts["malformed frame datagrams"] == 5, "5 counted")
        publisher = FramePublisher(frames)
        motion = np.full(112, 0.01, np.float32)
        publisher.frame(motion, 64, 1.5, np.full(735, 0.1, np.float32),
                        {"model": "m", "voice": "corpus", "recording": False, "take": None})
        until(lambda: heard.at("/dancesampler/level"), "the frame sent on")
        publisher.close()
    finally:
        service.close()
    assert heard.at("/dancesampler/level")[0][0] == pytest.approx(-20.0, abs=1e-3)
    # A second service on the same socket is refused, and leaves the first's alone.
    first = OscService(OscConfig(send_to=f"127.0.0.1:{heard.port}"), frames=frames,
                       control=tmp_path / "ctl.sock").start()
    try:
        with pytest.raises(OscError, match="another OSC service takes frames on"):
            OscService(OscConfig(send_to=f"127.0.0.1:{heard.port}"), frames=frames,
                       control=tmp_path / "ctl.sock").start()
        assert frames.exists()
    finally:
        first.close()
    assert not frames.exists()
    assert heard.at("/dancesampler/gain")[0][0] == pytest.approx(1.5)
    assert heard.at("/dancesampler/quantity")[0][0] == pytest.approx(0.01)
    assert heard.at("/wek/inputs")[0][0] == pytest.approx(0.015)
    assert heard.at("/dancesampler/model") == [["m", "corpus"]]
    assert not heard.at("/dancesampler/motiongram")    # not asked for
    assert not heard.at("/dancesampler/latent")        # a voice without one


def test_a_frame_carries_the_latent_to_the_osc_message(tmp_path, heard):
    frames = tmp_path / "frames.sock"
    service = OscService(OscConfig(send_to=f"127.0.0.1:{heard.port}"), frames=frames,
                         control=tmp_path / "ctl.sock").start()
    latent = np.array([-1.5, 0.0, 0.25, 2.0], np.float32)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as local:
            publisher = FramePublisher(frames)
            publisher.frame(np.full(112, 0.01, np.float32), 64, 1.0,
                            np.zeros(735, np.float32), {"model": "m"}, latent=latent)
            # A frame whose latent is one value short, and a version 1 frame, are junk.
            whole = FRAME_HEADER.pack(FRAME_MAGIC, 1, 1.0, -20.0, 64, 48, 4)
            local.sendto(whole + bytes(4 * (112 + 3)), str(frames))
            local.sendto(b"DSF1" + bytes(16 + 4 * 112), str(frames))
            until(lambda: service.tally.counts["malformed frame datagrams"] == 2, "2 counted")
            publisher.close()
        until(lambda: heard.at("/dancesampler/latent"), "the latent sent on")
    finally:
        service.close()
    assert heard.at("/dancesampler/latent") == [latent.tolist()]
    frame = decode(FRAME_HEADER.pack(FRAME_MAGIC, 2, 1.0, -20.0, 64, 48, 0)
                   + np.zeros(112, "<f4").tobytes())
    assert frame.latent.shape == (0,) and frame.motion.shape == (112,)


def test_bad_osc_settings_are_one_line_naming_the_key(tmp_path):
    cfg = load_device_config()
    for overrides, fragment in (
            ({"osc.send_to": "studio.local:70000"}, "osc.send_to: port 70000 is not from"),
            ({"osc.send_to": "studio.local"}, "osc.send_to: expected '' (off) or 'HOST:PORT'"),
            ({"osc.listen": "studio.local:9000"}, "osc.listen: expected '' (off) or "
                                                  "'ADDRESS:PORT'"),
            ({"osc.listen": "300.1.2.3:9000"}, "osc.listen: '300.1.2.3' is not an IP"),
            ({"osc.allow": "127.0.0.1, 10.0.0.0/33"}, "osc.allow: '10.0.0.0/33' is not an IP "
                                                      "address or network")):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            with_overrides(cfg, overrides)
    assert with_overrides(cfg, {"osc.send_to": "[::1]:6448", "osc.listen": "[::]:9000",
                                "osc.allow": "127.0.0.1 ::1,192.168.1.0/24"}).osc.listen

    bad = tmp_path / "device.yaml"
    bad.write_text("osc:\n  send_to: 192.168.1.20:6448\n  motiongrams: true\n")
    result = subprocess.run([sys.executable, "-m", "device", "osc", "--config", str(bad)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    one_line_error(result, "osc.motiongrams: unknown key (did you mean 'motiongram'?)")


def test_with_osc_off_the_service_says_so_and_exits_and_a_port_in_use_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "device", "osc"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "osc.send_to and osc.listen are both empty" in result.stderr

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = tmp_path / "device.yaml"
        config.write_text(f"osc:\n  send_to: 127.0.0.1:6448\n  listen: 127.0.0.1:{port}\n")
        result = subprocess.run([sys.executable, "-m", "device", "osc", "--config", str(config),
                                 "--frames", str(tmp_path / "frames.sock")], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    one_line_error(result, f"osc.listen: cannot listen on 127.0.0.1:{port}: Address already "
                           "in use")
    assert not (tmp_path / "frames.sock").exists()


# ---- the unit file ---------------------------------------------------------------

def test_unit_file_verifies(tmp_path):
    verify_quietly(UNIT, tmp_path)
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=\S+ -m device osc$", text, re.M)


def test_unit_file_exposure_is_at_most_2():
    level, output = exposure(UNIT)
    assert level <= 2.0, output


def test_the_sound_service_keeps_no_network():
    sound = (ROOT / "systemd" / "dancesampler.service").read_text()
    assert re.search(r"^PrivateNetwork=yes$", sound, re.M)
    assert re.search(r"^RestrictAddressFamilies=AF_UNIX AF_NETLINK$", sound, re.M)
    osc = UNIT.read_text()
    assert re.search(r"^RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6$", osc, re.M)
    assert f"RuntimeDirectory={BOX_RUNTIME_DIR.name}" in osc.splitlines()

"""The technician's page, for real: a show playing the synthetic dancer into the
ALSA file device hands its frames and pictures to the web service, whose page a
real headless chromium (Debian's, driven by Selenium) logs into, watches and
records a take from. Plain HTTP checks the password, the upload of a bundle and
the takes. The unit that runs it is judged by systemd's own ``systemd-analyze``."""

import http.client
import io
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse

import numpy as np
import pytest

from device.config import load_device_config, with_overrides
from device.errors import ConfigError
from device.publish import PICTURE_MAGIC, FramePublisher, Picture, bind_listener, decode
from device.web import (FAILURES_PER_MINUTE, WebError, WebService, check_password,
                        hash_password)
from tests.conftest import ROOT, exposure, one_line_error, start_show, until, verify_quietly

UNIT = ROOT / "systemd" / "dancesampler-web.service"
PASSWORD = "aim-the-camera"
ARTEFACTS = ROOT / "out" / "test-web"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def box(tmp_path, default_bundle, alsa_file_device):
    """A show (synthetic dancer, ALSA file device, a take recorder, the control
    channel) with the page on, and the web service beside it on loopback."""
    device, raw = alsa_file_device
    frames = tmp_path / "web" / "frames.sock"
    performance, cfg, ctl, stop, thread = start_show(
        tmp_path, default_bundle, device, {"web.listen": f"127.0.0.1:{free_port()}"},
        line_s=60.0, web_frames=frames)
    service = WebService(cfg, frames=frames, control=ctl,
                         password_hash=hash_password(PASSWORD),
                         uploads=tmp_path / "uploads").start()
    try:
        yield Box(performance, service, cfg, ctl, tmp_path)
    finally:
        service.close()
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert raw.stat().st_size > 0, "no sound reached the ALSA device"
    assert not frames.exists(), "the frames socket was left behind"


class Box:
    def __init__(self, performance, service, cfg, ctl, tmp):
        self.performance, self.service, self.cfg, self.ctl_path = performance, service, cfg, ctl
        self.takes, self.models = tmp / "takes", tmp / "models"
        self.host, self.port = service.address
        self.url = f"http://{self.host}:{self.port}"

    def http(self, method: str, path: str, body: bytes | None = None, *,
             cookie: str | None = None, **headers) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=150)
        try:
            if cookie:
                headers["Cookie"] = cookie
            conn.request(method, path, body=body,
                          headers={k.replace("_", "-"): v for k, v in headers.items()})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def login(self, password: str = PASSWORD) -> tuple[int, str | None]:
        status, headers, _ = self.http(
            "POST", "/login", urllib.parse.urlencode({"password": password}).encode(),
            Content_Type="application/x-www-form-urlencoded")
        cookie = headers.get("Set-Cookie", "").split(";")[0] or None
        return status, cookie

    def ctl(self, cookie: str, cmd: str, value=None) -> dict:
        status, _, body = self.http("POST", "/api/ctl", json.dumps({"cmd": cmd, "value": value})
                                    .encode(), cookie=cookie, X_Dancesampler="1",
                                    Content_Type="application/json")
        assert status == 200, body
        return json.loads(body)


# ---- plain HTTP ------------------------------------------------------------------

def test_nothing_but_the_login_page_without_the_password(box, caplog):
    for path in ("/api/live", "/api/takes", "/api/voices", "/takes/x.tar", "/web_page.html"):
        status, _, body = box.http("GET", path)
        assert status == 401 and json.loads(body) == {"error": "log in first"}, (path, status)
    status, headers, _ = box.http("GET", "/")
    assert status == 303 and headers["Location"] == "/login"
    status, _, body = box.http("GET", "/login")
    assert status == 200 and b'type="password"' in body
    status, _, _ = box.http("POST", "/api/ctl", b'{"cmd": "record"}', X_Dancesampler="1")
    assert status == 401 and not box.performance.recorder.recording
    # A cookie that was never given out is no session.
    status, _, _ = box.http("GET", "/api/live", cookie="dancesampler=" + "x" * 43)
    assert status == 401

    status, cookie = box.login()
    assert status == 303 and cookie and cookie.startswith("dancesampler=")
    status, _, body = box.http("GET", "/api/live", cookie=cookie)
    assert status == 200 and json.loads(body)["count"] > 0
    # A POST without the page's own header (what a form on another site sends) is refused.
    status, _, _ = box.http("POST", "/api/ctl", b'{"cmd": "record"}', cookie=cookie)
    assert status == 403 and not box.performance.recorder.recording

    box.service.tally.every_s = 3600.0   # one line at the first, the rest at the end
    with caplog.at_level(logging.WARNING, logger="device.web"):
        for _ in range(FAILURES_PER_MINUTE):
            status, wrong = box.login("aim-the-camera ")
            assert status == 401 and wrong is None
        # Past the limit even the right password is not tried for a minute.
        assert box.login() == (429, None)
        status, _, body = box.http("GET", "/api/live", cookie=cookie)   # logged in before
        assert status == 200
        box.service.tally.report(now=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("web: refused")]
    assert lines == ["web: refused: wrong passwords: 1 (e.g. 127.0.0.1)",
                     "web: refused: wrong passwords: 4 (e.g. 127.0.0.1); logins refused "
                     "untried (too many wrong passwords): 1 (e.g. 127.0.0.1)"], lines

    status, _, _ = box.http("POST", "/logout", b"", cookie=cookie, X_Dancesampler="1")
    assert status == 200
    assert box.http("GET", "/api/live", cookie=cookie)[0] == 401


def test_the_password_is_kept_as_a_salted_pbkdf2_hash():
    stored = hash_password(PASSWORD)
    kind, rounds, salt, digest = stored.split("$")
    assert kind == "pbkdf2-sha256" and int(rounds) >= 100_000 and len(salt) == 32
    assert PASSWORD not in stored and hash_password(PASSWORD) != stored   # a fresh salt
    assert check_password(PASSWORD, stored) and not check_password(PASSWORD + "x", stored)


def test_an_uploaded_bundle_is_checked_before_it_joins_the_models(box, default_bundle):
    _, cookie = box.login()
    before = sorted(p.name for p in box.models.iterdir())

    def upload(name: str, data: bytes) -> dict:
        status, _, body = box.http("POST", "/api/upload?name=" + name, data, cookie=cookie,
                                   X_Dancesampler="1")
        assert status == 200, body
        return json.loads(body)

    good = default_bundle.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2: len(damaged) // 2 + 4] = b"\0\0\0\0"
    reply = upload("broken.dsb", bytes(damaged))
    assert not reply["ok"] and reply["error"].startswith("refused: ") \
        and "\n" not in reply["error"], reply
    assert sorted(p.name for p in box.models.iterdir()) == before
    reply = upload("a.dsb", good)
    assert not reply["ok"] and "exists; a bundle is never replaced" in reply["error"]
    reply = upload("../evil.dsb", good)
    assert not reply["ok"] and "is not a bundle's file name" in reply["error"]

    reply = upload("new.dsb", good)
    assert reply["ok"] and reply["note"] == "added new", reply
    assert (box.models / "new.dsb").read_bytes() == good
    assert sorted(p.name for p in box.models.iterdir()) == sorted(before + ["new.dsb"])
    assert not list((box.service.uploads).iterdir()), "an upload was left behind"
    status, _, body = box.http("GET", "/api/voices", cookie=cookie)
    assert json.loads(body) == ["a", "b", "new"]


def test_takes_are_labelled_listed_downloaded_and_deleted_through_the_box(box):
    _, cookie = box.login()
    assert box.ctl(cookie, "record", "Warm up 1")["ok"]
    until(lambda: box.performance.recorder.recording, "recording")
    time.sleep(0.5)
    assert box.ctl(cookie, "stop")["ok"]
    info = box.performance.recorder.wait()
    assert info.clean and info.path.name.endswith("-warm_up_1")
    status, _, body = box.http("GET", "/api/takes", cookie=cookie)
    takes = json.loads(body)
    assert [t["name"] for t in takes] == [info.path.name] and takes[0]["label"] == "warm_up_1"

    (info.path / ".session.yaml.tmp").write_text("a temporary the recorder renames away")
    status, headers, body = box.http("GET", f"/takes/{info.path.name}.tar", cookie=cookie)
    assert status == 200 and headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert set(got) == {f"{info.path.name}/{n}" for n in
                        ("session.yaml", "frames.u8", "frames.t", "audio.wav")}
    assert got[f"{info.path.name}/audio.wav"] == (info.path / "audio.wav").read_bytes()
    assert box.http("GET", "/takes/..%2Fmodels.tar", cookie=cookie)[0] == 404

    # The next take from a button (no label) has the recorder's own label again.
    assert box.ctl(cookie, "record")["ok"]
    time.sleep(0.3)
    assert box.ctl(cookie, "stop")["ok"]
    second = box.performance.recorder.wait()
    assert second.path.name.endswith("-take")

    reply = box.ctl(cookie, "delete-take", info.path.name)
    assert reply["ok"] and not info.path.exists() and second.path.exists()
    reply = box.ctl(cookie, "delete-take", info.path.name)
    assert not reply["ok"] and "no take" in reply["error"]
    assert box.ctl(cookie, "delete-last")["ok"]
    until(lambda: not second.path.exists(), "the last take deleted")
    assert box.ctl(cookie, "volume", "0.3")["volume"] == 0.3
    assert not box.ctl(cookie, "add-model", "/etc/passwd.dsb")["ok"]   # upload only


def test_pictures_go_only_to_a_listener_and_only_every_few_frames(tmp_path):
    path = tmp_path / "frames.sock"
    publisher = FramePublisher(path, picture_every=3)
    motion, hop = np.zeros(112, np.float32), np.zeros(735, np.float32)
    picture = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    state = {"model": "m", "voice": "model", "recording": False, "take": None}
    for _ in range(9):
        publisher.frame(motion, 64, 1.0, hop, state, picture)
    assert publisher.pictures == 0 and publisher.sent == 0, "sent to nobody"
    sock = bind_listener(path, who="test", error=WebError)
    sock.settimeout(1)
    try:
        for _ in range(9):
            publisher.frame(motion, 64, 1.0, hop, state, picture)
        items = []
        while True:
            try:
                items.append(decode(sock.recv(65536)))
            except TimeoutError:
                break
    finally:
        sock.close()
        publisher.close()
    pictures = [item for item in items if isinstance(item, Picture)]
    # Frames 9 to 17: pictures with 9, 12 and 15 (the first send found the listener).
    assert [p.frame for p in pictures] == [9, 12, 15] and publisher.pictures == 3
    assert np.array_equal(pictures[0].image, picture)
    with pytest.raises(ValueError, match="a picture datagram of"):
        decode(PICTURE_MAGIC + bytes(8) + b"x")


def test_the_service_off_says_so_and_without_a_password_is_one_line(tmp_path):
    off = tmp_path / "off.yaml"
    off.write_text("web:\n  listen: ''\n")
    result = subprocess.run([sys.executable, "-m", "device", "web", "--config", str(off)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "web.listen is empty" in result.stderr, result.stderr
    missing = tmp_path / "none"
    result = subprocess.run([sys.executable, "-m", "device", "web", "--password-file",
                             str(missing)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    one_line_error(result, f"{missing}: no password is set for the page")
    bad = tmp_path / "bad.yaml"
    bad.write_text("web:\n  listen: 0.0.0.0:99999\n  upload_max: 3\n")
    result = subprocess.run([sys.executable, "-m", "device", "web", "--config", str(bad)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    one_line_error(result, "web.upload_max: unknown key (did you mean 'upload_max_mb'?)")
    with pytest.raises(ConfigError, match=re.escape("web.listen: port 99999 is not from 1")):
        with_overrides(load_device_config(), {"web.listen": "0.0.0.0:99999"})

    made = tmp_path / "web-password"
    result = subprocess.run([sys.executable, "-m", "device", "web-password", "--out", str(made)],
                            cwd=ROOT, input=PASSWORD + "\n", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert check_password(PASSWORD, made.read_text().strip())
    assert made.stat().st_mode & 0o777 == 0o600


# ---- a real browser --------------------------------------------------------------

def _chromium():
    """A headless chromium driven by Selenium, or a skip saying what is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("chromium and chromedriver are not installed here (Debian packages "
                    "chromium, chromium-driver; make test installs them as root)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=412,1400", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update",
                 "--proxy-server=direct://", "--proxy-bypass-list=*"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def test_in_a_real_browser_the_picture_moves_a_take_lands_and_a_wrong_password_is_refused(
        box, tmp_path):
    from selenium.webdriver.common.by import By

    browser = _chromium()
    try:
        browser.set_page_load_timeout(30)
        browser.get(box.url + "/")
        assert browser.current_url.endswith("/login")
        field = browser.find_element(By.NAME, "password")
        field.send_keys("not the password")
        field.submit()
        until(lambda: "wrong password" in browser.page_source, "the refusal shown")
        status = browser.execute_script(
            "return fetch('/api/live').then(r => r.status)")
        assert status == 401

        field = browser.find_element(By.NAME, "password")
        field.send_keys(PASSWORD)
        field.submit()
        until(lambda: browser.current_url.rstrip("/") == box.url, "the page after login")
        frame = lambda: browser.execute_script("return window.dsPictureFrame")   # noqa: E731
        picture = lambda: browser.execute_script(   # noqa: E731
            "return document.getElementById('picture').toDataURL()")
        until(lambda: frame() >= 0, "a first picture")
        first, first_frame = picture(), frame()
        until(lambda: frame() > first_frame + 6, "a later picture")
        assert picture() != first, "two pictures of a moving dancer are the same"
        until(lambda: browser.find_element(By.ID, "status").text.startswith("playing default ("),
              "the status line")
        until(lambda: "fps" in browser.find_element(By.ID, "figures").text
              and not browser.find_element(By.ID, "figures").text.startswith("0 fps"),
              "the frame rate")

        engine = box.performance.engine
        # The dynamics depth and the strike the box plays at, each set from the page.
        for key, now, value, reached in (
                ("dynamics", "0.50", 1, lambda: engine.dynamics.depth == 1.0),
                ("strike", "1.00", 0.5, lambda: engine.strikes.strike == 0.5)):
            until(lambda: browser.find_element(By.ID, key + "val").text == now, key + " now")
            browser.execute_script(f"const s = document.getElementById('{key}'); "
                                   f"s.value = {value}; s.dispatchEvent(new Event('change'))")
            until(reached, f"{key} set from the page")
            until(lambda: browser.find_element(By.ID, key + "val").text == f"{value:.2f}",
                  f"the page shows the {key} set")

        browser.find_element(By.ID, "label").send_keys("from the page")
        browser.find_element(By.ID, "record").click()
        until(lambda: box.performance.recorder.recording, "recording from the page")
        until(lambda: browser.find_element(By.ID, "state").text == "recording",
              "the page says recording")
        # Enough of the motiongram to see it scroll, then the page as it looks.
        until(lambda: frame() > first_frame + 150, "5 s of motiongram")
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTEFACTS / "page.png"
        browser.save_screenshot(str(shot))
        print(f"screenshot of the page while recording: {shot}")
        browser.find_element(By.ID, "stop").click()
        until(lambda: not box.performance.recorder.recording, "stopped from the page")
        info = box.performance.recorder.wait()
        assert info.clean and info.frames > 0 and info.path.parent == box.takes
        assert info.path.name.endswith("-from_the_page")
        until(lambda: info.path.name in browser.find_element(By.ID, "takes").text,
              "the take listed on the page")
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()


# ---- the unit file ---------------------------------------------------------------

def test_unit_file_verifies(tmp_path):
    verify_quietly(UNIT, tmp_path)
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=\S+ -m device web$", text, re.M)
    assert "LoadCredential=web-password:/etc/dancesampler/web-password" in text.splitlines()


def test_unit_file_exposure_is_at_most_2():
    level, output = exposure(UNIT)
    assert level <= 2.0, output


def test_the_page_is_one_small_file_with_no_outside_resources():
    page = (ROOT / "device" / "web_page.html").read_text()
    assert len(page) < 20_000
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "fetch(\"/api/live" in page or "/api/live?since=" in page

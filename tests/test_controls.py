"""The buttons and the status light, driven through real gpiozero devices on
gpiozero's own MockFactory: pins are pulled low and high as a dancer's finger
would, and the LED pin's recorded, timestamped states are read back."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device.config import load_config
from device.controls import Controls, ControlsConfig, ControlsError
from device.errors import ConfigError

# Short times keep the suite fast; the config's own minimum long press is 0.5 s.
CFG = ControlsConfig(long_press_s=0.3, bounce_s=0.02, pin_factory="mock")
SHORT = 0.08  # a short press: longer than the bounce time, well under long_press_s
REST = 2 * CFG.bounce_s  # a finger is up at least this long between presses


class Calls:
    """The three callbacks, counted; ``fail_first`` names ones whose first call raises."""

    def __init__(self, fail_first: tuple[str, ...] = ()):
        self.counts: Counter[str] = Counter()
        self.threads: dict[str, str] = {}
        self._fail_first = fail_first
        self._changed = threading.Condition()

    def _callback(self, name: str):
        def call():
            with self._changed:
                self.counts[name] += 1
                self.threads[name] = threading.current_thread().name
                self._changed.notify_all()
            if name in self._fail_first and self.counts[name] == 1:
                raise RuntimeError(f"{name} broke")
        return call

    def kwargs(self) -> dict:
        return {"on_record_toggle": self._callback("toggle"),
                "on_record_delete_last": self._callback("delete"),
                "on_next_model": self._callback("next")}

    def wait_for(self, name: str, count: int, timeout: float = 3.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.counts[name] >= count, timeout)


@pytest.fixture(autouse=True)
def no_default_factory(monkeypatch):
    # gpiozero keeps its default factory in a class attribute; every test starts
    # without one and leaves none behind.
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.close()


@pytest.fixture
def calls():
    return Calls()


@pytest.fixture
def controls(factory, calls):
    with Controls(CFG, pin_factory=factory, **calls.kwargs()) as c:
        yield c


def wait_until(condition, timeout: float = 3.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def press(pin, seconds: float = SHORT) -> None:
    time.sleep(REST)
    pin.drive_low()  # pull_up=True: pressed is low
    time.sleep(seconds)
    pin.drive_high()


def pins(factory, config=CFG):
    return (factory.pin(config.record_pin), factory.pin(config.model_pin),
            factory.pin(config.led_pin))


# ---- the record button ---------------------------------------------------------

def test_short_press_toggles_recording_once_per_press(controls, factory, calls):
    record, _, _ = pins(factory)
    press(record)
    assert calls.counts == {"toggle": 1}
    press(record)
    assert calls.counts == {"toggle": 2}
    time.sleep(CFG.long_press_s + 0.1)  # the hold timer must not fire after release
    assert calls.counts == {"toggle": 2}


def test_long_press_deletes_last_take_once_and_does_not_toggle(controls, factory, calls):
    record, _, _ = pins(factory)
    start = time.monotonic()
    record.drive_low()
    assert calls.wait_for("delete", 1), "holding the record button never deleted"
    # Deleted while still held (the dancer sees it happen), not before long_press_s.
    assert time.monotonic() - start >= CFG.long_press_s - 0.02
    assert not record.state
    assert calls.threads["delete"] != threading.current_thread().name  # gpiozero's
    time.sleep(CFG.long_press_s + 0.1)  # held on for a while: still one delete
    record.drive_high()
    assert calls.counts == {"delete": 1}
    press(record)  # the next short press is an ordinary toggle again
    assert calls.counts == {"delete": 1, "toggle": 1}


def test_a_hold_timer_firing_late_never_deletes(controls, factory, calls):
    # gpiozero's hold thread can lose a race with the release: the press has then
    # already ended short, and a late timer must not delete a take as well.
    record, _, _ = pins(factory)
    press(record)
    controls._record_held()  # what the hold thread would do, late
    assert calls.counts == {"toggle": 1}
    # Nor may it make a brand-new press long.
    time.sleep(REST)
    record.drive_low()
    controls._record_held()
    time.sleep(SHORT)
    record.drive_high()
    assert calls.counts == {"toggle": 2}


def test_record_button_bounce_toggles_once(controls, factory, calls):
    record, _, _ = pins(factory)
    for level in (0, 1, 0, 1, 0):  # contacts chattering as they close
        record.drive_low() if level == 0 else record.drive_high()
    time.sleep(SHORT)
    for level in (1, 0, 1, 0, 1):  # and as they open
        record.drive_low() if level == 0 else record.drive_high()
    assert calls.counts == {"toggle": 1}


# ---- the model button ----------------------------------------------------------

def test_model_button_counts_each_press_once_and_ignores_bounce(controls, factory, calls):
    _, model, _ = pins(factory)
    press(model)
    assert calls.counts == {"next": 1}
    time.sleep(REST)
    for level in (0, 1, 0, 1, 0):  # one press, bouncing
        model.drive_low() if level == 0 else model.drive_high()
    time.sleep(SHORT)
    for level in (1, 0, 1, 0, 1):  # its release, bouncing
        model.drive_low() if level == 0 else model.drive_high()
    assert calls.counts == {"next": 2}
    time.sleep(REST)
    press(model)
    assert calls.counts == {"next": 3}


# ---- the status light ----------------------------------------------------------

def test_playing_is_steady_on_and_off_is_off(controls, factory):
    _, _, led = pins(factory)
    controls.set_state("playing")
    assert led.state
    led.clear_states()
    time.sleep(0.3)
    assert led.state and len(led.states) == 1  # no change at all while playing
    controls.set_state("off")
    assert not led.state


@pytest.mark.parametrize("state, hertz", [("starting", 5), ("recording", 2), ("error", 10)])
def test_blinking_states_blink_at_their_rate(controls, factory, state, hertz):
    _, _, led = pins(factory)
    led.clear_states()
    controls.set_state(state)
    deadline = time.monotonic() + 4 / hertz + 2
    while len(led.states) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    # states[0] is where clear_states left it and states[1] the first switch on;
    # each later entry holds the time the LED spent in the state before it.
    states = led.states[:8]
    assert [s.state for s in states[1:]] == [True, False] * 3 + [True]
    on = statistics.median(s.timestamp for s in states[2::2])
    off = statistics.median(s.timestamp for s in states[3::2])
    assert 1 / (on + off) == pytest.approx(hertz, rel=0.3)
    assert on == pytest.approx(off, rel=0.5)  # an even blink, not a flash


def test_unknown_state_is_refused(controls):
    with pytest.raises(ValueError, match="'dancing'.*starting, playing"):
        controls.set_state("dancing")


# ---- callbacks that fail -------------------------------------------------------

def test_a_raising_callback_is_logged_and_later_presses_still_work(factory, caplog):
    calls = Calls(fail_first=("toggle", "delete"))
    with Controls(CFG, pin_factory=factory, **calls.kwargs()):
        record, _, _ = pins(factory)
        press(record)
        time.sleep(REST)
        record.drive_low()
        assert calls.wait_for("delete", 1)
        record.drive_high()

        def failures():
            return [r for r in caplog.records if "callback failed" in r.getMessage()]

        # The hold thread logs just after the callback has counted itself.
        assert wait_until(lambda: len(failures()) == 2)
        assert [r.levelno for r in failures()] == [logging.ERROR, logging.ERROR]
        assert [r.exc_info[0] for r in failures()] == [RuntimeError, RuntimeError]
        press(record)
        assert calls.counts["toggle"] == 2
        # The delete callback runs in gpiozero's hold thread: had its exception
        # escaped, that thread would be gone and this long press would do nothing.
        time.sleep(REST)
        record.drive_low()
        assert calls.wait_for("delete", 2), "long presses stopped after a failing callback"
        record.drive_high()


# ---- pin factories, pins and closing -------------------------------------------

def test_auto_never_simulates_the_pins_off_the_pi(calls):
    """Where no GPIO pin library works, 'auto' is an error naming the key and the
    way to ask for simulated pins, never mock pins that pretend to be buttons."""
    if any(importlib.util.find_spec(name) for name in ("lgpio", "RPi", "pigpio")):
        pytest.skip("a GPIO pin library is installed here")
    with pytest.raises(ControlsError, match=r"controls\.pin_factory: 'auto' found no GPIO pin "
                                            r"library .*set it to 'mock'"):
        Controls(dataclasses.replace(CFG, pin_factory="auto"), **calls.kwargs())
    assert Device.pin_factory is None


def test_auto_honours_gpiozero_pin_factory_env(monkeypatch, calls, caplog):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    with caplog.at_level(logging.WARNING, logger="device.controls"):
        with Controls(dataclasses.replace(CFG, pin_factory="auto"), **calls.kwargs()) as c:
            assert c.pin_factory is Device.pin_factory  # gpiozero's own choice
            assert c.simulated
    assert "simulated" in caplog.text


def test_explicit_factory_that_cannot_load_is_an_error(calls):
    if importlib.util.find_spec("lgpio"):
        pytest.skip("lgpio is installed here")
    with pytest.raises(ControlsError, match=r"controls\.pin_factory: lgpio cannot be used"):
        Controls(dataclasses.replace(CFG, pin_factory="lgpio"), **calls.kwargs())


def test_bad_pin_names_the_key_and_frees_the_pins_already_claimed(factory, calls):
    bad = dataclasses.replace(CFG, led_pin="GPIO99")
    with pytest.raises(ControlsError, match=r"controls\.led_pin: cannot use pin GPIO99"):
        Controls(bad, pin_factory=factory, **calls.kwargs())
    with Controls(CFG, pin_factory=factory, **calls.kwargs()):
        press(factory.pin(CFG.record_pin))  # the record pin was given back
    assert calls.counts == {"toggle": 1}


def test_close_is_safe_twice_turns_the_light_off_and_frees_the_pins(factory, calls):
    controls = Controls(CFG, pin_factory=factory, **calls.kwargs())
    controls.set_state("recording")
    controls.close()
    controls.close()
    controls.set_state("playing")  # after close: ignored, not an error
    _, _, led = pins(factory)
    assert not led.state and controls.state == "off"
    with Controls(CFG, pin_factory=factory, **calls.kwargs()):
        pass  # the same pins can be claimed again


def test_disabled_controls_touch_no_pins(factory, calls):
    with Controls(dataclasses.replace(CFG, enabled=False), pin_factory=factory,
                  **calls.kwargs()) as controls:
        controls.set_state("recording")
        assert controls.state == "recording"
    assert factory.pins == {}


# ---- the config section --------------------------------------------------------

def test_config_section_defaults_and_every_mistake_at_once(tmp_path: Path):
    path = tmp_path / "controls.yaml"
    path.write_text("")
    assert load_config(path, ControlsConfig) == ControlsConfig()
    path.write_text("record_pin: gpio17\nlong_press_s: 0.1\npin_factory: lgpoi\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ControlsConfig)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "record_pin: expected a pin name such as 'GPIO17'" in message
    assert "long_press_s: expected a number from 0.5 to 10, got 0.1" in message
    assert "(did you mean 'lgpio'?)" in message


def test_config_refuses_one_pin_for_two_jobs(tmp_path: Path):
    path = tmp_path / "controls.yaml"
    path.write_text("record_pin: '17'\nled_pin: BCM17\n")
    with pytest.raises(ConfigError, match="led_pin: BCM17 is already the record_pin"):
        load_config(path, ControlsConfig)

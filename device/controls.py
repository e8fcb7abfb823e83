"""The dancers' buttons and the status light, through gpiozero.

Two buttons and one LED. The record button: a short press starts or stops a take,
a long press (held for ``long_press_s``) deletes the last take and does not also
toggle recording when it is let go. The model button: each press asks for the
next model. The LED tells the dancer what the box is doing (``set_state``).

The callbacks given to ``Controls`` run in gpiozero's threads (the pin library's
event thread, or gpiozero's hold thread for a long press), not the caller's: they
must return at once and never block (post to a queue and return), or later
presses are delayed or lost. An exception from a callback is logged and the
buttons keep working.

gpiozero is imported only when a ``Controls`` is made. On the box it is Raspberry Pi
OS's own (``python3-gpiozero`` with ``python3-lgpio``, which work on a Pi 5 where
PyPI's gpiozero 2.0.1 does not); the release does not install one over it. Pins
are never simulated unless asked for (``pin_factory: mock``, or gpiozero's own
``GPIOZERO_PIN_FACTORY=mock``): where no GPIO pin library works, ``auto`` is a
``ControlsError``, and the show plays without buttons, saying why.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from device.config import PIN_FACTORIES, ControlsConfig
from device.errors import ControlsError

if TYPE_CHECKING:
    from gpiozero.pins import Factory

log = logging.getLogger(__name__)

STATES = ("starting", "playing", "recording", "error", "off")
"""What the status light can show."""

BLINKS = {"starting": (0.1, 0.1), "recording": (0.25, 0.25), "error": (0.05, 0.05)}
"""Seconds on and off for the blinking states: starting blinks fast (5 Hz),
recording at 2 Hz (clearly "recording" from across the room), an error flickers
at 10 Hz. Playing is steady on; off is off."""

class _Presses:
    """One button's raw edges turned into whole presses, bounce filtered out.

    gpiozero hands ``bounce_time`` to the pin library, but each library treats it
    its own way (lgpio filters glitches, RPi.GPIO locks out after an edge) and the
    mock pins ignore it, so bounce is filtered here too, the same on every factory:
    a press counts only once the button has been up for ``bounce_s``, a release
    only once it has been down for ``bounce_s``.

    Called from two threads (the pin library's and gpiozero's hold thread), so
    each decision is taken under a lock: a press ends either short or long, never
    both, however a release and the hold timer race.
    """

    def __init__(self, bounce_s: float, long_press_s: float = float("inf")):
        self._bounce_s = bounce_s
        self._long_press_s = long_press_s
        self._lock = threading.Lock()
        self._state = "up"  # "up", "down" or "held"
        self._down_at = 0.0  # when the current press began
        self._up_at: float | None = None  # when the button last went up, bounce included

    def press(self) -> bool:
        """The button went down: True if this starts a press."""
        now = time.monotonic()
        with self._lock:
            if self._up_at is not None and now - self._up_at < self._bounce_s:
                return False  # the contacts are still bouncing
            # From "down" too: the last release was ignored as bounce but the
            # button has been up since, so that press was too short to count.
            self._state, self._down_at = "down", now
            return True

    def release(self) -> str | None:
        """The button went up: "short" or "long" if a press ended, else None."""
        now = time.monotonic()
        with self._lock:
            self._up_at = now
            if self._state == "down" and now - self._down_at < self._bounce_s:
                return None  # bounce on the way down: the press goes on
            ended, self._state = self._state, "up"
            return {"down": "short", "held": "long"}.get(ended)

    def hold(self) -> bool:
        """gpiozero's hold timer fired: True if the press in progress becomes long."""
        now = time.monotonic()
        with self._lock:
            # A timer that fired late, after this press ended and another began,
            # must not make the new press long: deleting a take cannot be undone.
            # (The slack covers Event.wait returning a hair early.)
            if self._state != "down" or now - self._down_at < self._long_press_s - 0.02:
                return False
            self._state = "held"
            return True


class Controls:
    """The record and model buttons and the status light on the Pi's GPIO pins.

    ``on_record_toggle`` is called when a short press of the record button ends,
    ``on_record_delete_last`` as soon as the record button has been held for
    ``long_press_s`` (the release that follows does nothing), ``on_next_model``
    when a short press of the model button ends, and ``on_voice_from_last_take``
    as soon as the model button has been held for ``long_press_s``. They run in gpiozero's
    threads and must not block. ``pin_factory`` (a gpiozero Factory or one of
    ``PIN_FACTORIES``) overrides ``config.pin_factory``.
    """

    def __init__(self, config: ControlsConfig, *, on_record_toggle: Callable[[], object],
                 on_record_delete_last: Callable[[], object],
                 on_next_model: Callable[[], object],
                 on_voice_from_last_take: Callable[[], object] = lambda: None,
                 pin_factory: Factory | str | None = None):
        self.config = config
        self.state = "off"
        self.pin_factory: Factory | None = None
        """The gpiozero pin factory in use; None when the controls are disabled."""
        self.simulated = False
        """True when the pins are gpiozero's mock pins, not real GPIO."""
        self._callbacks = {"record toggle": on_record_toggle,
                           "delete last take": on_record_delete_last,
                           "next model": on_next_model,
                           "voice from last take": on_voice_from_last_take}
        self._lock = threading.Lock()
        self._closed = False
        self._owns_factory = False
        self._record = self._model = self._led = None
        self._record_presses = _Presses(config.bounce_s, config.long_press_s)
        self._model_presses = _Presses(config.bounce_s, config.long_press_s)
        if not config.enabled:
            log.info("controls: disabled in the config; no buttons, no status light")
            return

        try:
            from gpiozero import LED, Button
        except ImportError as exc:
            raise ControlsError(f"controls: gpiozero cannot be imported ({exc}); on the box "
                                "it comes from apt (python3-gpiozero)") from None

        self.pin_factory, self._owns_factory, why = _open_factory(
            config.pin_factory if pin_factory is None else pin_factory)
        self.simulated = _is_mock(self.pin_factory)
        if self.simulated:
            log.warning("controls: the buttons and status light are simulated with "
                        "gpiozero's MockFactory (%s); real buttons do nothing", why)
        bounce = config.bounce_s or None  # gpiozero takes None, not 0, for "no filter"
        try:
            self._record = self._claim("record_pin", Button, pull_up=True,
                                       bounce_time=bounce, hold_time=config.long_press_s)
            self._model = self._claim("model_pin", Button, pull_up=True, bounce_time=bounce,
                                      hold_time=config.long_press_s)
            self._led = self._claim("led_pin", LED)
        except BaseException:
            self.close()
            raise
        self._record.when_pressed = self._record_pressed
        self._record.when_released = self._record_released
        self._record.when_held = self._record_held
        self._model.when_pressed = self._model_presses.press
        self._model.when_released = self._model_released
        self._model.when_held = self._model_held
        log.info("controls: record button %s (hold %.1f s to delete the last take), "
                 "model button %s (hold: a voice from the last take), status light %s, "
                 "pin factory %s",
                 config.record_pin, config.long_press_s, config.model_pin,
                 config.led_pin, type(self.pin_factory).__name__)

    def set_state(self, state: str) -> None:
        """Show ``state`` (one of ``STATES``) on the status light; any thread.
        Setting the state it already shows leaves the blink's rhythm alone."""
        if state not in STATES:
            raise ValueError(f"status light state {state!r}: expected one of "
                             + ", ".join(STATES))
        with self._lock:
            if self._closed or state == self.state:
                return
            self.state = state
            if self._led is None:
                return
            if state in BLINKS:
                on_s, off_s = BLINKS[state]
                self._led.blink(on_time=on_s, off_time=off_s, background=True)
            elif state == "playing":
                self._led.on()
            else:
                self._led.off()

    def close(self) -> None:
        """Turn the light off and release the pins; safe to call twice. Not from
        inside a callback: closing joins gpiozero's threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.state = "off"
        for name, device in (("record button", self._record),
                             ("model button", self._model), ("status light", self._led)):
            if device is None:
                continue
            try:
                if device is self._led:
                    device.off()  # a closed pin is left as it was, perhaps lit
                device.close()  # also stops gpiozero's hold and blink threads
            except Exception:  # one stuck device must not keep the others' pins
                log.exception("controls: closing the %s failed", name)
        self._record = self._model = self._led = None
        if self._owns_factory and self.pin_factory is not None:
            try:
                self.pin_factory.close()
            except Exception:
                log.exception("controls: closing the pin factory failed")

    def __enter__(self) -> Controls:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- in gpiozero's threads ------------------------------------------------

    def _record_pressed(self) -> None:
        self._record_presses.press()

    def _record_released(self) -> None:
        if self._record_presses.release() == "short":
            log.info("controls: record button pressed: toggling recording")
            self._call("record toggle")

    def _record_held(self) -> None:
        if self._record_presses.hold():
            log.info("controls: record button held: deleting the last take")
            self._call("delete last take")

    def _model_released(self) -> None:
        if self._model_presses.release() == "short":
            log.info("controls: model button pressed: next model")
            self._call("next model")

    def _model_held(self) -> None:
        if self._model_presses.hold():
            log.info("controls: model button held: a voice from the last take")
            self._call("voice from last take")

    def _call(self, name: str) -> None:
        # An exception escaping into gpiozero's hold thread would end that
        # thread, and with it every later long press; so none escapes.
        if self._closed:  # an edge that was on its way while the pins closed
            return
        try:
            self._callbacks[name]()
        except Exception:
            log.exception("controls: the %s callback failed", name)

    def _claim(self, key: str, device_class: type, **kwargs):
        pin = getattr(self.config, key)
        try:
            return device_class(pin, pin_factory=self.pin_factory, **kwargs)
        except Exception as exc:
            raise ControlsError(f"controls.{key}: cannot use pin {pin} "
                                f"({_reason(exc)})") from exc


def _open_factory(choice: Factory | str) -> tuple[Factory, bool, str]:
    """The pin factory to use, whether it is ours to close, and how it was chosen."""
    if not isinstance(choice, str):
        return choice, False, "the factory passed in"
    if choice == "auto":
        return _auto_factory()
    if choice not in PIN_FACTORIES:
        raise ControlsError(f"controls.pin_factory: {choice!r} is not one of "
                            + ", ".join(PIN_FACTORIES))
    from importlib.metadata import entry_points

    # The same registry gpiozero looks $GPIOZERO_PIN_FACTORY up in.
    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name == choice:
            try:
                return ep.load()(), True, f"pin_factory is {choice!r}"
            except Exception as exc:
                raise ControlsError(f"controls.pin_factory: {choice} cannot be used here "
                                    f"({_reason(exc)})") from exc
    raise ControlsError(f"controls.pin_factory: gpiozero has no pin factory {choice!r}")


def _auto_factory() -> tuple[Factory, bool, str]:
    """gpiozero's shared default factory; a ControlsError where none works."""
    from gpiozero import Device

    # gpiozero warns once per library it could not load; those reasons go into
    # the log (the journal), not to stderr, and into the line saying why the
    # pins are simulated.
    with warnings.catch_warnings(record=True) as tried:
        warnings.simplefilter("always")
        try:
            Device.ensure_pin_factory()
            failure = None
        except Exception as exc:
            failure = exc
    reasons = [str(w.message).removeprefix("Falling back from ") for w in tried]
    if failure is None:
        for reason in reasons:
            log.info("controls: pin library fallback: %s", reason)
        return Device.pin_factory, False, "gpiozero's default pin factory"
    raise ControlsError("controls.pin_factory: 'auto' found no GPIO pin library that works "
                        f"here ({'; '.join(reasons) or _reason(failure)}); set it to 'mock' "
                        "to simulate the buttons")


def _is_mock(factory: Factory) -> bool:
    from gpiozero.pins.mock import MockFactory

    return isinstance(factory, MockFactory)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


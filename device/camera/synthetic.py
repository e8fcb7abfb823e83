"""The synthetic dancer: a procedural figure that stands in for a camera.

It is the default camera on a machine with no camera, and the source of the
project's own demo training data, so the amount and the place of its motion
must vary over time the way a dancer's do: a seeded choreography of sections
("still", "sway", "arms", "legs", "travel", "jump"), each 2-8 s long with its
own tempo, whose parameters glide into each other so that the pose never jumps.
Everything is deterministic given the seed: the choreography, the backdrop and
the sensor noise each draw from their own seeded stream.

Rendering must stay cheap (a fraction of a millisecond a frame): it runs live at
30-90 fps and renders 10-minute training takes. It must never touch hardware and
never sleep unless asked to pace itself in real time.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from device.camera import Frame

log = logging.getLogger(__name__)

STYLES = ("still", "sway", "arms", "legs", "travel", "jump")
"""The section labels the choreography draws from."""

GLIDE_S = 0.3
"""Seconds over which one section's energy, amplitudes and tempo glide into the next's."""

PHASE_GLIDE_S = 1.0
"""Seconds over which the limbs' phase relations glide (faster looks like a twitch)."""

NOISE_SIGMA = 1.5
"""Sensor noise in grey levels: far below the motiongram threshold (13 levels)."""

# Joint speeds (radians per second, after weighting) that count as full arm or
# leg motion in DancerState; a vigorous section reaches about this.
_ARM_FULL_SPEED = 10.0
_LEG_FULL_SPEED = 8.0
# Shoulder angle (radians from hanging) that counts as arms overhead in DancerState.
_ARMS_OVERHEAD = 2.5

# Oscillator channels: each is rest + energy * (centre + A1 sin(phase1 + o1)
# + A2 sin(phase2 + o2)); the bounce channel's first term is |sin| (hops).
_SWAY, _BOUNCE, _LEAN, _SH_L, _SH_R, _EL_L, _EL_R, _HIP_L, _HIP_R, _KNEE_L, _KNEE_R = range(11)
_CHANNELS = 11
# A section's parameters are packed as energy, tempo, travel, then per channel:
# centre, A1, A2, m1, m2, o1, o2 (see _section_params); these are o1 and o2.
_OFFSETS = slice(3 + 5 * _CHANNELS, 3 + 7 * _CHANNELS)
# Neutral pose: sway and bounce in body units (pixels at 48 rows), angles in
# radians from straight down, positive outward (arms) or bent (elbows, knees).
_REST = np.array([0.0, 0.0, 0.0, 0.25, 0.25, 0.15, 0.15, 0.10, 0.10, 0.05, 0.05])
# Joint limits keep the figure anatomically plausible whatever the sums reach.
_LOW = np.array([-np.inf, -np.inf, -0.6, -0.5, -0.5, -0.3, -0.3, -0.3, -0.3, 0.0, 0.0])
_HIGH = np.array([np.inf, np.inf, 0.6, 3.0, 3.0, 2.5, 2.5, 1.4, 1.4, 2.2, 2.2])

# Body lengths in pixels for a 48-row frame (scaled with the height).
_THIGH, _SHIN, _TORSO, _HEAD_R, _HEAD_UP = 8.0, 8.0, 11.0, 3.6, 5.4
_SHOULDER_HALF, _SHOULDER_DOWN, _HIP_HALF = 3.6, 1.5, 1.8
_UPPER_ARM, _FOREARM = 6.5, 6.0
#             torso head  upper arm x2  forearm x2  thigh x2  shin x2
_RADII = np.array([3.0, _HEAD_R, 1.3, 1.3, 1.1, 1.1, 1.7, 1.7, 1.4, 1.4], np.float32)
_GROUND = 0.94
"""Where the feet stand, as a fraction of the frame height from the top."""

_FIGURE_GREY = 205.0


@dataclass(frozen=True)
class DancerState:
    """How the synthetic dancer moved in its most recent frame."""

    energy: float
    """How vigorously it moves now, 0 (perfectly still) to 1."""
    x: float
    """Horizontal centre of the figure, 0 (left edge) to 1 (right edge)."""
    arms: float
    """Arm motion speed, 0 (arms still) to 1 (full-speed waving)."""
    legs: float
    """Leg motion speed, 0 (legs still) to 1 (full-speed steps and kicks)."""
    style: str
    """The label of the choreography section this frame belongs to."""
    reach: float = 0.0
    """How high the arms are raised, 0 (hanging) to 1 (overhead)."""


@dataclass(frozen=True)
class _Section:
    style: str
    start: float          # seconds
    duration: float       # seconds
    params: np.ndarray    # packed, see _Choreography._unpack


def _section_params(style: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Draw one section's energy, tempo and oscillator settings for ``style``."""
    u = rng.uniform
    c = np.zeros(_CHANNELS)                   # centre offsets
    a1 = np.zeros(_CHANNELS)
    a2 = np.zeros(_CHANNELS)
    m1 = np.ones(_CHANNELS)                   # frequency multiples of the tempo
    m2 = rng.choice([0.5, 2.0, 3.0], _CHANNELS)
    o1 = rng.uniform(0, 2 * np.pi, _CHANNELS)
    o2 = rng.uniform(0, 2 * np.pi, _CHANNELS)
    travel = 0.0                              # frame widths per second at energy 1
    # Left and right limbs either mirror each other or alternate.
    for left, right in ((_SH_L, _SH_R), (_EL_L, _EL_R), (_HIP_L, _HIP_R), (_KNEE_L, _KNEE_R)):
        o1[right] = o1[left] + (np.pi if rng.random() < 0.5 else 0.0)
    if style == "still":
        energy, tempo = u(0.03, 0.07), u(0.2, 0.35)
        m2[:] = 1.0
        a2[_BOUNCE] = 8.0                     # breathing: under half a pixel at this energy
        a2[_SH_L] = a2[_SH_R] = 0.5
    elif style == "sway":
        energy, tempo = u(0.15, 0.35), u(0.3, 0.7)
        a1[_SWAY], a1[_LEAN] = u(6.0, 10.0), u(0.3, 0.6)
        o1[_LEAN] = o1[_SWAY]
        a1[[_SH_L, _SH_R]] = u(0.4, 0.8)
        a1[[_HIP_L, _HIP_R]] = u(0.1, 0.3)
    elif style == "arms":
        energy, tempo = u(0.3, 0.85), u(0.6, 1.6)
        c[[_SH_L, _SH_R]] = u(0.5, 1.5)
        a1[[_SH_L, _SH_R]] = u(1.2, 2.0)
        a2[[_SH_L, _SH_R]] = u(0.1, 0.4)
        c[[_EL_L, _EL_R]] = u(0.2, 0.8)
        a1[[_EL_L, _EL_R]] = u(0.6, 1.2)
    elif style == "legs":
        energy, tempo = u(0.3, 0.85), u(0.8, 2.0)
        a1[[_HIP_L, _HIP_R]] = u(0.6, 1.1)
        a2[[_HIP_L, _HIP_R]] = u(0.1, 0.3)
        c[[_KNEE_L, _KNEE_R]] = u(0.4, 0.8)
        a1[[_KNEE_L, _KNEE_R]] = u(0.8, 1.4)
        a1[_BOUNCE] = u(1.0, 3.0)
    elif style == "travel":
        energy, tempo = u(0.4, 0.85), u(0.6, 1.4)
        travel = u(0.3, 0.5)
        a1[[_HIP_L, _HIP_R]] = u(0.4, 0.7)
        o1[_HIP_R] = o1[_HIP_L] + np.pi       # walking alternates the legs
        c[[_KNEE_L, _KNEE_R]] = u(0.2, 0.4)
        a1[[_KNEE_L, _KNEE_R]] = u(0.4, 0.8)
        o1[_KNEE_R] = o1[_KNEE_L] + np.pi
        a1[[_SH_L, _SH_R]] = u(0.3, 0.6)
        o1[_SH_R] = o1[_SH_L] + np.pi
        a1[_BOUNCE] = u(0.5, 1.5)
    elif style == "jump":
        energy, tempo = u(0.8, 1.0), u(1.0, 1.8)
        a1[_BOUNCE] = u(5.0, 8.0)
        c[[_SH_L, _SH_R]] = u(1.0, 1.8)
        a1[[_SH_L, _SH_R]] = u(1.0, 1.5)
        o1[_SH_R] = o1[_SH_L]
        a1[[_EL_L, _EL_R]] = u(0.3, 0.8)
        c[[_HIP_L, _HIP_R]] = u(0.1, 0.4)
        a1[[_HIP_L, _HIP_R]] = u(0.3, 0.6)
        c[[_KNEE_L, _KNEE_R]] = u(0.3, 0.6)
        a1[[_KNEE_L, _KNEE_R]] = u(0.4, 0.8)
        a1[_LEAN] = u(0.05, 0.2)
        # Hops land together: the bounce, hips and knees share the tempo's phase.
        o1[[_HIP_L, _HIP_R, _KNEE_L, _KNEE_R]] = o1[_BOUNCE]
    else:
        raise ValueError(f"style {style!r}: expected one of {', '.join(STYLES)}")
    return (np.array([energy, tempo, travel]), c, a1, a2, m1, m2, o1, o2)


def _smoothstep(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)


class _Choreography:
    """The dancer's motion, one frame at a time, without rendering.

    Sections are drawn lazily from the seeded generator, so an endless dance
    costs nothing up front and a given seed always dances the same way.
    """

    def __init__(self, *, fps: float, seed: int, energy: float | None,
                 width: int = 64, height: int = 48):
        self._dt = 1.0 / fps
        self._sway_to_x = (height / 48.0) / width   # body units to frame widths
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        self._energy = energy
        self._index = 0
        self._phase1 = np.zeros(_CHANNELS)
        self._phase2 = np.zeros(_CHANNELS)
        self._pos = 0.5                      # travel position, frame widths
        self._vel = 0.0                      # frame widths per second
        self._direction = 1.0 if self._rng.random() < 0.5 else -1.0
        self._previous: np.ndarray | None = None
        self._bag: list[str] = []
        first = self._draw(None, 0.0)
        self._from = first.params            # parameters gliding out
        self._section = first

    def _draw(self, previous: _Section | None, start: float) -> _Section:
        if not self._bag:
            # Styles come in shuffled rounds of all six, so every half minute or
            # so holds each kind of motion; a round never repeats the last style.
            self._bag = [str(s) for s in self._rng.permutation(STYLES)]
            if previous is not None and self._bag[-1] == previous.style:
                self._bag[0], self._bag[-1] = self._bag[-1], self._bag[0]
        style = self._bag.pop()
        duration = float(self._rng.uniform(2.0, 8.0))
        parts = _section_params(style, self._rng)
        params = np.concatenate(parts)
        if previous is not None:
            # Only the phase relations between limbs matter, so drop the part of
            # the change common to all of them, then glide the rest the short way.
            old = previous.params[_OFFSETS]
            change = (params[_OFFSETS] - old + np.pi) % (2 * np.pi) - np.pi
            change -= np.angle(np.exp(1j * change).mean())
            params[_OFFSETS] = old + (change + np.pi) % (2 * np.pi) - np.pi
        if style == "travel":
            self._direction = 1.0 if self._rng.random() < 0.5 else -1.0
        return _Section(style, start, duration, params)

    @staticmethod
    def _unpack(p: np.ndarray) -> tuple[np.ndarray, ...]:
        n = _CHANNELS
        head, rest = p[:3], p[3:]
        return (head, *(rest[i * n:(i + 1) * n] for i in range(7)))

    def step(self) -> tuple[np.ndarray, float, DancerState]:
        """Advance one frame: joint values (channels), centre x (frame widths), state."""
        t = self._index * self._dt
        section = self._section
        if t >= section.start + section.duration:
            self._from = section.params
            section = self._section = self._draw(section, section.start + section.duration)
        since = t - section.start
        w = np.full(len(section.params), _smoothstep(since / GLIDE_S) if self._index else 1.0)
        w[_OFFSETS] = _smoothstep(since / PHASE_GLIDE_S) if self._index else 1.0
        p = self._from + (section.params - self._from) * w
        (energy, tempo, travel), c, a1, a2, m1, m2, o1, o2 = self._unpack(p)
        if self._energy is not None:
            energy = self._energy

        # Phases integrate frequency, so tempo changes never make the pose jump.
        self._phase1 = (self._phase1 + 2 * np.pi * tempo * m1 * self._dt) % (2 * np.pi)
        self._phase2 = (self._phase2 + 2 * np.pi * tempo * m2 * self._dt) % (2 * np.pi)
        s1 = np.sin(self._phase1 + o1)
        s1[_BOUNCE] = abs(s1[_BOUNCE])
        joints = _REST + energy * (c + a1 * s1 + a2 * np.sin(self._phase2 + o2))
        np.clip(joints, _LOW, _HIGH, out=joints)

        # Position integrates a smoothed velocity; turn back before the edges.
        if (self._pos > 0.72 and self._direction > 0) or (self._pos < 0.28 and self._direction < 0):
            self._direction = -self._direction
        target = energy * travel * self._direction
        self._vel += (target - self._vel) * (1.0 - math.exp(-self._dt / 0.15))
        self._pos += self._vel * self._dt

        previous = joints if self._previous is None else self._previous
        speed = np.abs(joints - previous) / self._dt
        self._previous = joints
        arms = (speed[_SH_L] + speed[_SH_R] + 0.5 * (speed[_EL_L] + speed[_EL_R])) / 2
        legs = (speed[_HIP_L] + speed[_HIP_R] + 0.5 * (speed[_KNEE_L] + speed[_KNEE_R])) / 2
        x_centre = self._pos + joints[_SWAY] * self._sway_to_x
        state = DancerState(
            energy=float(energy),
            x=float(min(max(x_centre, 0.0), 1.0)),
            arms=float(min(arms / _ARM_FULL_SPEED, 1.0)),
            legs=float(min(legs / _LEG_FULL_SPEED, 1.0)),
            style=section.style,
            reach=float(min(max((joints[_SH_L] + joints[_SH_R]) / (2 * _ARMS_OVERHEAD), 0.0), 1.0)))
        self._index += 1
        return joints, self._pos, state


def dance_states(seconds: float, *, fps: float = 30.0, seed: int = 0,
                 energy: float | None = None, width: int = 64,
                 height: int = 48) -> list[DancerState]:
    """The choreography of a take, one state per frame, without rendering a pixel.

    Gives the same states as ``SyntheticDancer`` with the same arguments.
    """
    _check_args(fps, width, height, seconds, energy)
    dance = _Choreography(fps=fps, seed=seed, energy=energy, width=width, height=height)
    return [dance.step()[2] for _ in range(round(seconds * fps))]


class _Renderer:
    """Draws a pose on the static backdrop: thick anti-aliased limbs, float grey."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.width, self.height = width, height
        self.scale = height / 48.0
        self._ys, self._xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        self._radii = (_RADII * self.scale)[:, None]
        self.backdrop = self._backdrop(rng)

    def _backdrop(self, rng: np.random.Generator) -> np.ndarray:
        """A darker, softly textured wall and floor; static for the whole take."""
        h, w = self.height, self.width
        coarse = rng.normal(0.0, 6.0, (7, 9))
        # Bilinear upsampling of coarse noise gives blotches, not pixel grain.
        yi = np.linspace(0, coarse.shape[0] - 1, h)
        xi = np.linspace(0, coarse.shape[1] - 1, w)
        rows = np.array([np.interp(xi, np.arange(coarse.shape[1]), r) for r in coarse])
        blotches = np.array([np.interp(yi, np.arange(coarse.shape[0]), col) for col in rows.T]).T
        y = (np.arange(h)[:, None] + 0.5) / h
        wall = 62.0 - 18.0 * y + blotches
        floor = 40.0 + 0.5 * blotches
        return np.where(y < _GROUND, wall, floor).astype(np.float32)

    def segments(self, joints: np.ndarray, centre: float) -> tuple[np.ndarray, np.ndarray]:
        """Start and end points (pixels) of the torso, head and limbs for a pose."""
        # Plain floats: a handful of scalars is far cheaper than small numpy arrays.
        s = self.scale
        (sway, bounce, lean, sh_l, sh_r, el_l, el_r,
         hip_l, hip_r, knee_l, knee_r) = joints.tolist()
        cos_l, sin_l = math.cos(lean), math.sin(lean)
        # The longer leg stands on the ground; the other is lifted (a kick or step).
        reach = max(_THIGH * math.cos(h) + _SHIN * math.cos(h - k)
                    for h, k in ((hip_l, knee_l), (hip_r, knee_r)))
        hx = centre * self.width + sway * s
        hy = _GROUND * self.height - (bounce + reach) * s
        nx, ny = hx + _TORSO * s * sin_l, hy - _TORSO * s * cos_l
        head = (nx + _HEAD_UP * s * sin_l, ny - _HEAD_UP * s * cos_l)
        starts, ends = [(hx, hy), head], [(nx, ny), head]
        shoulders, elbows, hands, hips, knees, feet = [], [], [], [], [], []
        for side, shoulder, elbow, hip, knee in ((-1.0, sh_l, el_l, hip_l, knee_l),
                                                 (1.0, sh_r, el_r, hip_r, knee_r)):
            # Arms hang from the leaning torso: rotate their directions by the lean.
            sx = nx - _SHOULDER_DOWN * s * sin_l + side * _SHOULDER_HALF * s * cos_l
            sy = ny + _SHOULDER_DOWN * s * cos_l + side * _SHOULDER_HALF * s * sin_l
            ux, uy = side * math.sin(shoulder), math.cos(shoulder)
            fx, fy = side * math.sin(shoulder + elbow), math.cos(shoulder + elbow)
            ex = sx + _UPPER_ARM * s * (ux * cos_l - uy * sin_l)
            ey = sy + _UPPER_ARM * s * (ux * sin_l + uy * cos_l)
            shoulders.append((sx, sy))
            elbows.append((ex, ey))
            hands.append((ex + _FOREARM * s * (fx * cos_l - fy * sin_l),
                          ey + _FOREARM * s * (fx * sin_l + fy * cos_l)))
            px, py = hx + side * _HIP_HALF * s, hy
            kx = px + _THIGH * s * side * math.sin(hip)
            ky = py + _THIGH * s * math.cos(hip)
            hips.append((px, py))
            knees.append((kx, ky))
            feet.append((kx + _SHIN * s * side * math.sin(hip - knee),
                         ky + _SHIN * s * math.cos(hip - knee)))
        starts += shoulders + elbows + hips + knees
        ends += elbows + hands + knees + feet
        return np.array(starts, np.float32), np.array(ends, np.float32)

    def render(self, joints: np.ndarray, centre: float) -> np.ndarray:
        """Float grey image (height, width) of the figure on the backdrop."""
        a, b = self.segments(joints, centre)
        # Only pixels near the figure can be covered: measure distances there.
        reach = float(self._radii.max()) + 1.0
        ends = np.vstack([a, b])
        x0, y0 = np.floor(ends.min(axis=0) - reach).astype(int)
        x1, y1 = np.ceil(ends.max(axis=0) + reach).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, self.width), min(y1, self.height)
        image = self.backdrop.copy()
        if x1 <= x0 or y1 <= y0:
            return image                      # danced off the frame
        px, py = self._xs[y0:y1, x0:x1].ravel(), self._ys[y0:y1, x0:x1].ravel()
        ax, ay = a[:, :1], a[:, 1:]
        ex, ey = b[:, :1] - ax, b[:, 1:] - ay
        dx, dy = px - ax, py - ay
        # Distance from every pixel centre to every segment, all at once.
        t = np.clip((dx * ex + dy * ey) / (ex * ex + ey * ey + 1e-6), 0.0, 1.0)
        dx -= t * ex
        dy -= t * ey
        inside = (np.sqrt(dx * dx + dy * dy) - self._radii).min(axis=0)
        # A one-pixel ramp at the edge anti-aliases the outline.
        cover = np.clip(0.5 - inside, 0.0, 1.0).reshape(y1 - y0, x1 - x0)
        patch = image[y0:y1, x0:x1]
        patch += cover * (_FIGURE_GREY - patch)
        return image


def _check_args(fps: float, width: int, height: int, seconds: float | None,
                energy: float | None) -> None:
    if not fps > 0:
        raise ValueError(f"fps: expected a positive number, got {fps}")
    if width < 8 or height < 8:
        raise ValueError(f"frame size: expected at least 8x8, got {width}x{height}")
    if seconds is not None and not seconds >= 0:
        raise ValueError(f"seconds: expected None or a number >= 0, got {seconds}")
    if energy is not None and not 0.0 <= energy <= 1.0:
        raise ValueError(f"energy: expected None or a number in [0, 1], got {energy}")


class SyntheticDancer:
    """A camera that films a procedural dancer; see the module docstring.

    ``seconds=None`` dances forever, else ``read`` returns ``None`` after
    ``round(seconds * fps)`` frames. ``energy=None`` follows the choreography's
    own energy; a number in [0, 1] pins it (0 stands perfectly still).
    ``paced=True`` delivers frames in real time, else as fast as possible.
    """

    def __init__(self, fps: float = 30.0, width: int = 64, height: int = 48,
                 seed: int = 0, paced: bool = False, seconds: float | None = None,
                 energy: float | None = None):
        _check_args(fps, width, height, seconds, energy)
        self.fps = float(fps)
        self.paced = bool(paced)
        self.name = f"synthetic dancer (seed {seed})"
        self.width, self.height = width, height
        self._frames = None if seconds is None else round(seconds * fps)
        self._dance = _Choreography(fps=self.fps, seed=seed, energy=energy,
                                    width=width, height=height)
        self._renderer = _Renderer(width, height,
                                   np.random.default_rng(np.random.SeedSequence([seed, 2])))
        self._noise = np.random.default_rng(np.random.SeedSequence([seed, 3]))
        self._index = 0
        self._start: float | None = None
        self._state: DancerState | None = None
        self._closed = False

    @property
    def state(self) -> DancerState | None:
        """How the figure moved in the most recent frame (``None`` before the first)."""
        return self._state

    def read(self) -> Frame | None:
        """The next frame, or ``None`` once the set length has been danced."""
        if self._closed or (self._frames is not None and self._index >= self._frames):
            return None
        if self.paced:
            self._wait_for_frame()
        joints, centre, self._state = self._dance.step()
        grey = self._renderer.render(joints, centre)
        grey += self._noise.standard_normal(grey.shape, np.float32) * np.float32(NOISE_SIGMA)
        image = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        frame = Frame(image=image, timestamp=self._index / self.fps)
        self._index += 1
        return frame

    def _wait_for_frame(self) -> None:
        # Each frame has its own deadline from one start time, so sleeps never drift.
        now = time.monotonic()
        if self._start is None:
            self._start = now
        deadline = self._start + self._index / self.fps
        if deadline > now:
            time.sleep(deadline - now)
        elif now - deadline > 1.0:
            # Far behind (the reader stalled): start the clock again rather than
            # delivering a burst of frames to catch up.
            log.debug("synthetic dancer: %.2f s behind real time, resetting the clock",
                      now - deadline)
            self._start = now - self._index / self.fps

    def close(self) -> None:
        """Stop the stream; later reads return ``None``. Safe to call twice."""
        self._closed = True

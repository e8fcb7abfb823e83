"""Motion-capture skeletons drawn as a camera would see the dancer: 64x48 grey frames.

The mocap importer turns 23-joint skeletons (Tang, Jia and Mao's dance dataset,
see shared/realdata/SOURCES.md) into the frames a camera on the box would give,
so the one motiongram function can be computed from them as from any camera.

The picture is an orthographic view from the front: the up axis is found in the
data (the axis along which head minus feet is largest on average), the depth
axis dropped is the horizontal axis along which the shoulder line spreads least
(the dancer shows the camera their chest more often than their side). The
framing is fixed for the whole take, from the take's bounding box with a
margin and the aspect ratio kept, so the figure travels across the frame as the
dancer travels across the floor, like a static camera. Limbs are anti-aliased
light lines on a dark background and the head is a disc.

Rendering is deterministic and noise-free (the motiongram's threshold is for
real sensors; nothing here needs it), vectorised over frames and pixels, and
fast: thousands of frames a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

JOINTS = 23
"""Joints per skeleton frame in the source data."""

SOURCE_FPS = 25.0
"""Skeleton frames per second in the source data."""

BONE_LIST_VERSION = 1
"""Changes whenever BONES, the virtual joints or the drawing rules change."""

# The topology is the one the dataset's own drawing script (utils/draw.py of
# mhy12345/Music-to-Dance-Motion-Synthesis) connects, checked against the data:
# every bone keeps its length within a few percent over a take (tests prove it).
# Joints 0 and 1 are the two head markers, 2 the lower spine, 3-6 and 12-15 the
# arms (shoulder, elbow, two forearm markers), 7-11 and 16-20 the legs (hip,
# knee, ankle, two foot markers). Joints 21 and 22 are extra forearm markers that
# the source leaves unconnected; they are not drawn. Four virtual joints, the
# midpoints the source draws to, follow the 23 real ones.
HEAD, NECK, FOOT_A, FOOT_B = 23, 24, 25, 26
_VIRTUAL = {HEAD: (0, 1), NECK: (3, 12), FOOT_A: (10, 11), FOOT_B: (19, 20)}

BONES: tuple[tuple[int, int], ...] = (
    (HEAD, NECK), (NECK, 2),                      # neck and spine
    (NECK, 3), (3, 4), (4, 5), (5, 6),            # one arm
    (NECK, 12), (12, 13), (13, 14), (14, 15),     # the other arm
    (2, 7), (7, 8), (8, 9), (9, FOOT_A), (10, 11),        # one leg and foot
    (2, 16), (16, 17), (17, 18), (18, FOOT_B), (19, 20),  # the other leg and foot
)
"""Pairs of joint indices drawn as lines (indices 23-26 are the virtual joints)."""

_HEAD_MARKERS = (0, 1)
_FOOT_MARKERS = (10, 11, 19, 20)
_SHOULDERS = (3, 12)

# Body proportions in the data's own units (centimetres in this dataset are not
# assumed: both are fractions of the head-to-neck distance, measured per take).
_HEAD_RADIUS = 0.55        # of the median head-centre-to-neck distance
_LIMB_WIDTH = 0.5          # of the same; thick enough to read as a body, not wire
_MIN_LINE_PX = 1.0         # a line never thinner than a pixel, or it flickers away
_MIN_HEAD_PX = 1.2
_MARGIN = 0.08             # of the frame size, on every side
_BACKGROUND, _FIGURE = 16.0, 232.0
_CHUNK = 32                # frames rendered at once: bounds the (T, bones, pixels) temporaries


@dataclass(frozen=True)
class View:
    """Where the camera looks from and how the take is framed; fixed for a take."""

    up_axis: int
    """Index (0-2) of the data's vertical axis."""
    up_sign: int
    """+1 if larger values along up_axis are higher, else -1."""
    across_axis: int
    """Index of the horizontal axis that becomes the picture's x; the third is depth."""
    scale: float
    """Pixels per data unit."""
    left: float
    """Data coordinate (along across_axis) at the picture's left edge."""
    top: float
    """Height (up_sign * coordinate along up_axis) at the picture's top edge."""
    line_px: float
    """Width of a limb in pixels."""
    head_px: float
    """Radius of the head disc in pixels."""

    @property
    def depth_axis(self) -> int:
        """Index of the axis the front view drops."""
        return 3 - self.up_axis - self.across_axis


def with_virtual_joints(joints: np.ndarray) -> np.ndarray:
    """(T, 23, 3) joints -> (T, 27, 3) with the head, neck and feet midpoints appended."""
    extra = [(joints[:, a] + joints[:, b]) / 2 for a, b in _VIRTUAL.values()]
    return np.concatenate([joints, np.stack(extra, axis=1)], axis=1)


def find_axes(joints: np.ndarray) -> tuple[int, int, int]:
    """(up axis, its sign, across axis) found from the data; see the module docstring.

    Head minus feet averages to the body's height along the up axis and to nearly
    nothing along the other two, whichever way the dancer faces or turns.
    """
    head = joints[:, list(_HEAD_MARKERS)].mean(axis=1)
    feet = joints[:, list(_FOOT_MARKERS)].mean(axis=1)
    rise = (head - feet).mean(axis=0)
    up = int(np.argmax(np.abs(rise)))
    sign = 1 if rise[up] > 0 else -1
    shoulders = np.abs(joints[:, _SHOULDERS[1]] - joints[:, _SHOULDERS[0]]).mean(axis=0)
    across = min((a for a in range(3) if a != up), key=lambda a: (-shoulders[a], a))
    return up, sign, across


def choose_view(joints: np.ndarray, width: int = 64, height: int = 48) -> View:
    """The fixed front view and framing for a whole take of world-space joints (T, 23, 3)."""
    _check_joints(joints)
    up, sign, across = find_axes(joints)
    full = with_virtual_joints(joints)
    neck_to_head = np.linalg.norm(full[:, HEAD] - full[:, NECK], axis=-1)
    unit = float(np.median(neck_to_head))
    if not np.isfinite(unit) or unit <= 0:
        raise ValueError("skeleton: head and neck coincide; cannot size the figure")
    head_r, limb_half = _HEAD_RADIUS * unit, _LIMB_WIDTH * unit / 2
    # The body's extent over the whole take, in data units, plus what the drawing adds.
    x = full[..., across]
    y = sign * full[..., up]
    pad = max(head_r, limb_half)
    x0, x1 = float(x.min()) - pad, float(x.max()) + pad
    y0, y1 = float(y.min()) - pad, float(y.max()) + pad
    usable_w, usable_h = width * (1 - 2 * _MARGIN), height * (1 - 2 * _MARGIN)
    scale = min(usable_w / (x1 - x0), usable_h / (y1 - y0))
    # Centre the take's box in the frame: same scale both ways, so no squashing.
    left = (x0 + x1) / 2 - width / 2 / scale
    top = (y0 + y1) / 2 + height / 2 / scale
    view = View(up_axis=up, up_sign=sign, across_axis=across, scale=scale, left=left,
                top=top, line_px=max(_MIN_LINE_PX, 2 * limb_half * scale),
                head_px=max(_MIN_HEAD_PX, head_r * scale))
    log.debug("skeleton view: %s", view)
    return view


def project(joints: np.ndarray, view: View) -> np.ndarray:
    """(T, J, 3) data coordinates -> (T, J, 2) picture coordinates (x right, y down) in pixels."""
    x = (joints[..., view.across_axis] - view.left) * view.scale
    y = (view.top - view.up_sign * joints[..., view.up_axis]) * view.scale
    return np.stack([x, y], axis=-1)


def render(joints: np.ndarray, width: int = 64, height: int = 48, *,
           view: View | None = None) -> np.ndarray:
    """Draw world-space joints (T, 23, 3) as uint8 grey frames (T, height, width)."""
    _check_joints(joints)
    view = view or choose_view(joints, width, height)
    points = project(with_virtual_joints(joints), view).astype(np.float32)
    # Only a window around the figure is drawn: the body covers a fraction of a
    # frame that shows the whole floor, and the rest is plain background. The
    # window has one size for the take (the largest the figure gets) and follows
    # the figure frame by frame.
    reach = max(view.line_px / 2, view.head_px) + 1.0
    low = np.floor(points.min(axis=1) - reach).astype(int)           # (T, 2) x, y
    high = np.ceil(points.max(axis=1) + reach).astype(int)
    win_w = int(min(width, (high[:, 0] - low[:, 0]).max()))
    win_h = int(min(height, (high[:, 1] - low[:, 1]).max()))
    origin_x = np.clip(low[:, 0], 0, width - win_w)
    origin_y = np.clip(low[:, 1], 0, height - win_h)
    rows, cols = np.mgrid[0:win_h, 0:win_w]
    rows, cols = rows.ravel(), cols.ravel()                          # (P,) in the window
    bones = np.array(BONES)
    frames = np.full((len(joints), height, width), int(_BACKGROUND), np.uint8)
    for start in range(0, len(joints), _CHUNK):
        stop = min(start + _CHUNK, len(joints))
        oy, ox = origin_y[start:stop, None], origin_x[start:stop, None]
        # Pixel centres: pixel (r, c) covers [c, c+1) x [r, r+1).
        px = (ox + cols[None]).astype(np.float32) + np.float32(0.5)   # (t, P)
        py = (oy + rows[None]).astype(np.float32) + np.float32(0.5)
        chunk = points[start:stop]
        limbs = _segment_distance(px, py, chunk[:, bones[:, 0]], chunk[:, bones[:, 1]])
        head = np.hypot(px - chunk[:, HEAD, 0:1], py - chunk[:, HEAD, 1:2])
        cover = np.maximum(_coverage(limbs, view.line_px / 2), _coverage(head, view.head_px))
        grey = np.rint(_BACKGROUND + (_FIGURE - _BACKGROUND) * cover).astype(np.uint8)
        frames[np.arange(start, stop)[:, None], oy + rows[None], ox + cols[None]] = grey
    return frames


def retime(joints: np.ndarray, source_fps: float, fps: float) -> np.ndarray:
    """Joints at another frame rate by linear interpolation; frame k is at k / fps s.

    The take lasts len(joints) / source_fps seconds either way, so the result has
    round(len * fps / source_fps) frames; the last ones hold the final pose.
    """
    if fps == source_fps:
        return joints
    count = round(len(joints) * fps / source_fps)
    where = np.minimum(np.arange(count) * (source_fps / fps), len(joints) - 1)
    lower = np.floor(where).astype(int)
    upper = np.minimum(lower + 1, len(joints) - 1)
    frac = (where - lower)[:, None, None]
    return joints[lower] * (1 - frac) + joints[upper] * frac


def _segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray,
                      b: np.ndarray) -> np.ndarray:
    """Distance from each pixel to the nearest bone: (T, P).

    px, py (T, P) pixel centres; a, b (T, B, 2) bone ends. The projection onto
    each segment is clamped to its ends, so a bone seen end-on is a dot, not a gap.
    x and y are kept apart: numpy is slow at reducing a trailing axis of two.
    """
    ax, ay = a[..., 0:1], a[..., 1:2]                                  # (T, B, 1)
    abx, aby = b[..., 0:1] - ax, b[..., 1:2] - ay
    inv = 1.0 / np.maximum(abx * abx + aby * aby, np.float32(1e-12))
    dx, dy = px[:, None] - ax, py[:, None] - ay                        # (T, B, P)
    t = np.clip((dx * abx + dy * aby) * inv, 0, 1)
    dx -= t * abx
    dy -= t * aby
    return np.sqrt((dx * dx + dy * dy).min(axis=1))


def _coverage(distance: np.ndarray, radius: float) -> np.ndarray:
    """How much of a pixel a shape of this radius covers: a one-pixel linear ramp at the edge."""
    return np.clip(radius + 0.5 - distance, 0.0, 1.0)


def _check_joints(joints: np.ndarray) -> None:
    if joints.ndim != 3 or joints.shape[1:] != (JOINTS, 3):
        raise ValueError(f"skeleton: expected joints of shape (T, {JOINTS}, 3), "
                         f"got {joints.shape}")
    if len(joints) == 0:
        raise ValueError("skeleton: no frames")

"""The plots written into every run folder, to see at a glance how a run went.

``write_plots`` puts PNGs into ``<run>/plots/``: the loss curves, the motion-only
latent space (a PCA of posterior means, coloured by label and by how much
moved) and true against generated spectrograms of a few examples.

Plots are a by-product of training: they read the run, never change it, and run
after it is saved. They subsample before running the model, so they take seconds
however big the data set is, and the same inputs and seed give byte-identical
files. Figures are built without pyplot, so nothing is kept in pyplot's global
figure list and no GUI backend is ever touched (training may run headless).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device.motiongram import MotiongramParams, motion_amount

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from train_host.dataset import Examples

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
SPECTROGRAM_EXAMPLES = 4
# No "Software: Matplotlib x.y" chunk: the same run plotted under another
# matplotlib version then still gives the same bytes.
_PNG_METADATA = {"Software": None}
_DPI = 100
_DB_RANGE = 80.0   # colour range of a spectrogram below its loudest bin
_NO_LABEL = "(no label)"


def write_plots(run_dir: str | Path, history: list[dict], vae, examples: Examples, *,
                motiongram_params: MotiongramParams, sample_rate: int,
                max_points: int = 2000, seed: int = 0) -> list[Path]:
    """Write the run's plots into ``run_dir/plots/``; return the paths written.

    ``history`` is ``train``'s list of per-epoch dicts; ``vae`` a
    ``train_host.vae.JointVAE``; ``examples`` the windows to show (at most
    ``max_points`` of them, a seeded subsample, go through the model).
    """
    out = Path(run_dir) / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if history:
        written.append(_save(loss_figure(history), out / "loss.png"))
    else:
        log.warning("no training history: no loss plot")
    if len(examples) == 0:
        log.warning("no examples: no latent or spectrogram plots")
        return written

    from train_host.vae import box_voice, motion_latent

    rng = np.random.default_rng(seed)
    # Drawn in this random order, no label is painted over the others as a block.
    pick = rng.permutation(len(examples))[:max_points]
    latents = motion_latent(vae, examples.motion[pick])
    amount = motion_amount(examples.motion[pick], motiongram_params).mean(axis=-1)
    by_label, by_motion = latent_figures(pca_2d(latents), examples.labels[pick], amount,
                                         total=len(examples))
    written.append(_save(by_label, out / "latent_by_label.png"))
    written.append(_save(by_motion, out / "latent_by_motion.png"))

    chosen = pick_spectrogram_examples(examples.labels, _rms(examples.audio),
                                       SPECTROGRAM_EXAMPLES, rng)
    generated = box_voice(vae, sample_rate, seed)(examples.motion[chosen])
    written.append(_save(spectrogram_figure(examples.audio[chosen], generated,
                                            examples.labels[chosen], sample_rate),
                         out / "spectrograms.png"))
    log.info("wrote %d plots to %s", len(written), out)
    return written


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, metadata=_PNG_METADATA)
    # Without pyplot nothing else refers to the figure; clearing it frees its
    # artists at once rather than at the next garbage collection.
    fig.clear()
    return path


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


# ---- losses ---------------------------------------------------------------------

def loss_figure(history: list[dict]) -> Figure:
    """Loss per epoch: total and motion-only spectral (left); KL terms and beta (right).

    Training curves are solid, validation dashed; a history without ``val_*``
    keys simply has no dashed curves.
    """
    epochs = np.array([r.get("epoch", i + 1) for i, r in enumerate(history)], float)
    keys = sorted({k for r in history for k in r})

    def series(key):   # NaN where an epoch lacks the key: a gap, not an error
        return np.array([r.get(key, np.nan) for r in history], float)

    fig = _figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    colours = iter(f"C{i}" for i in range(10))
    for name, title in (("total", "total"), ("motion_spectral", "motion-only spectral")):
        _curves(left, epochs, series, keys, name, title, next(colours))
    left.set_title("Loss")
    kl = sorted({k.split("_", 1)[1] for k in keys
                 if k.startswith(("train_", "val_")) and k.endswith("_kl")})
    for name in kl:
        _curves(right, epochs, series, keys, name, name.replace("_", " "), next(colours, "k"))
    right.set_title("KL divergence per posterior")
    extra = {left: [], right: []}
    if "beta" in keys:
        beta_ax = right.twinx()
        extra[right] = beta_ax.plot(epochs, series("beta"), color="0.4", linestyle=":",
                                    marker=".", label="beta (KL weight, right axis)")
        beta_ax.set_ylabel("beta (KL weight)", color="0.4")
        beta_ax.set_ylim(bottom=0)
    for ax in (left, right):
        ax.set_xlabel("epoch")
        _log_scale_if_useful(ax)
        if ax.lines:
            # One legend per panel, beta's line in it too: two legends overlap.
            ax.legend(handles=ax.lines + extra[ax], fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "not in history", ha="center", transform=ax.transAxes)
    return fig


def _curves(ax, epochs, series, keys, name, title, colour) -> None:
    for prefix, style in (("train", "-"), ("val", "--")):
        key = f"{prefix}_{name}"
        if key in keys:
            # Markers, so a one-epoch run still shows its points.
            ax.plot(epochs, series(key), color=colour, linestyle=style, marker="o",
                    markersize=3, label=f"{title} ({prefix})")


def _log_scale_if_useful(ax) -> None:
    """Log y when every value is positive and they span more than a factor of ten:
    early epochs' losses would otherwise flatten everything after them."""
    values = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.lines]
                            or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 10:
        ax.set_yscale("log")


# ---- latent space ---------------------------------------------------------------

def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of ``points`` (N, D).

    Returns (coordinates (N, 2), share of the total variance each explains).
    Components are ordered by variance; each is signed so that its largest
    loading is positive, so the picture does not flip between runs at random.
    Fewer than two dimensions of spread give zero columns, not an error.
    """
    points = np.asarray(points, np.float64)
    centred = points - points.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((len(points), 2))
    share = np.zeros(2)
    k = min(2, len(s))
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    coords[:, :k] = centred @ (vt[:k].T * signs)
    total = float((s ** 2).sum())
    if total > 0:
        share[:k] = s[:k] ** 2 / total
    return coords, share


def latent_figures(pca: tuple[np.ndarray, np.ndarray], labels: np.ndarray,
                   amount: np.ndarray, *, total: int) -> tuple[Figure, Figure]:
    """Two scatters of the same PCA points: coloured by label (one legend entry per
    label) and by motion amount (with a colourbar)."""
    coords, share = pca
    names = [str(x) or _NO_LABEL for x in labels]
    classes = sorted(set(names))
    title = f"Motion-only latent means, PCA ({len(coords)} of {total} examples)"

    by_label = _figure(7, 5.5)
    ax = by_label.subplots()
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    colour_of = {c: cmap(i % cmap.N) for i, c in enumerate(classes)}
    # One scatter in the (random) draw order, so no class hides the others;
    # the legend then needs stand-in handles, one per class.
    ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.7, linewidths=0,
               c=[colour_of[n] for n in names])
    handles = [Line2D([], [], linestyle="", marker="o", color=colour_of[c], label=c)
               for c in classes]
    ax.legend(handles=handles, title="label", fontsize="small", markerscale=1.2,
              loc="best", ncols=1 + len(classes) // 12)
    _pca_axes(ax, share, title)

    by_motion = _figure(7, 5.5)
    ax = by_motion.subplots()
    points = ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.8, linewidths=0,
                        c=amount, cmap="viridis")
    by_motion.colorbar(points, ax=ax,
                       label="motion amount: mean over the window (0 still, 1 all moving)")
    _pca_axes(ax, share, title)
    return by_label, by_motion


def _pca_axes(ax, share: np.ndarray, title: str) -> None:
    ax.set_xlabel(f"PC1 ({100 * share[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * share[1]:.0f}% of variance)")
    ax.set_title(title, fontsize="medium")


# ---- spectrograms ---------------------------------------------------------------

def pick_spectrogram_examples(labels: np.ndarray, loudness: np.ndarray, count: int,
                              rng: np.random.Generator) -> np.ndarray:
    """``count`` example indices spread over labels and over quiet and loud.

    Slots alternate quiet, loud; each goes to the label used least so far
    (preferring one not yet shown at that level; labels in a seeded order) and
    takes a random example from that label's quietest or loudest quarter.
    """
    names = np.array([str(x) for x in labels])
    classes = [str(c) for c in rng.permutation(np.unique(names))]
    members = {c: np.flatnonzero(names == c) for c in classes}
    used: dict[str, list[bool]] = {c: [] for c in classes}
    chosen: list[int] = []
    for slot in range(min(count, len(labels))):
        loud = slot % 2 == 1
        label = min(classes, key=lambda c: (len(used[c]), loud in used[c]))
        pool = [i for i in members[label] if i not in chosen]
        if not pool:   # this label is used up: any example not yet shown
            label = "any"
            pool = [i for i in range(len(labels)) if i not in chosen]
        pool = np.array(pool)[np.argsort(loudness[pool], kind="stable")]
        quarter = max(1, len(pool) // 4)
        chosen.append(int(rng.choice(pool[-quarter:] if loud else pool[:quarter])))
        if label in used:
            used[label].append(loud)
    return np.array(chosen, int)


def _rms(audio: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(audio, dtype=np.float64), axis=-1))


def log_spectrogram(audio: np.ndarray, sample_rate: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hann-windowed STFT magnitude in dB of one 1-D signal.

    Returns (dB (frequencies, frames), frame centre times in s, bin frequencies in Hz).
    The frame is a power of two about a quarter of the signal (at most 1024), so
    a short segment still has several frames; hop a quarter frame.
    """
    audio = np.asarray(audio, np.float64)
    frame = int(min(1024, max(16, 1 << max(0, int(np.log2(max(len(audio), 4) / 4))))))
    hop = frame // 4
    padded = np.pad(audio, (0, max(0, frame - len(audio))))
    starts = np.arange(0, len(padded) - frame + 1, hop)
    frames = padded[starts[:, None] + np.arange(frame)] * np.hanning(frame)
    magnitude = np.abs(np.fft.rfft(frames, axis=-1)).T / (frame / 2)
    db = 20 * np.log10(magnitude + 1e-7)
    return db, (starts + frame / 2) / sample_rate, np.fft.rfftfreq(frame, 1 / sample_rate)


def spectrogram_figure(true: np.ndarray, generated: np.ndarray, labels: np.ndarray,
                       sample_rate: int) -> Figure:
    """One row per example: true and generated log-magnitude spectrograms side by
    side, all on one colour scale, so levels compare across the whole figure."""
    rows = max(len(true), 1)
    fig = _figure(10, 0.6 + 2.4 * rows)
    axes = fig.subplots(rows, 2, squeeze=False, sharex=True, sharey=True)
    spectra = [(log_spectrogram(t, sample_rate), log_spectrogram(g, sample_rate))
               for t, g in zip(true, generated)]
    top = max((s[0].max() for pair in spectra for s in pair), default=0.0)
    image = None
    for row, pair in enumerate(spectra):
        label = str(labels[row]) or _NO_LABEL
        for col, ((db, times, freqs), what, audio) in enumerate(
                zip(pair, ("true", "generated"), (true[row], generated[row]))):
            hop_s = times[1] - times[0] if len(times) > 1 else len(audio) / sample_rate
            ax = axes[row, col]
            image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma",
                              vmin=top - _DB_RANGE, vmax=top,
                              extent=(times[0] - hop_s / 2, times[-1] + hop_s / 2,
                                      freqs[0], freqs[-1]))
            rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
            ax.set_title(f"{what}: {label}, rms {rms:.3f}", fontsize="small")
        axes[row, 0].set_ylabel("frequency (Hz)")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    if image is not None:
        fig.colorbar(image, ax=axes, label="magnitude (dB)", shrink=0.6)
    fig.suptitle("Audio segments: true vs generated from motion alone", fontsize="medium")
    return fig

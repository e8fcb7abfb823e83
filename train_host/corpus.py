"""``python -m train_host corpus``: a corpus voice from takes on the host.

The box's own builder (``device.corpus``), fed the way training is: takes found
under data folders (``dataset.find_takes``), re-timed and resampled to the training
config's frame rate and sample rate (``dataset.prepare_take``, with its cache) and
gained by its motion gain, so the voice shares the factory model's window, segment
and gain and the model button can crossfade between them. No TensorFlow.
"""

from __future__ import annotations

import logging
from pathlib import Path

from device.bundle import AudioParams
from device.config import CorpusConfig, with_overrides
from device.corpus import Piece, VoiceShape, write_corpus
from train_host.dataset import (DatasetError, add_cache_option, cache_dir_option, find_takes,
                                gained_motion, prepare_take)

log = logging.getLogger(__name__)

HOST_MAX_SECONDS = 3600.0
"""A host-built voice keeps up to an hour of takes unless told otherwise."""


def voice_shape(cfg) -> VoiceShape:
    """The frame rate, motiongram, audio, window and gain of a ``TrainConfig``."""
    d = cfg.data
    return VoiceShape(d.fps, cfg.motiongram, AudioParams(d.sample_rate, d.segment_samples,
                                                         d.hop_samples),
                      d.window_frames, cfg.motion_gain)


def build_from_data(roots: list, cfg, corpus: CorpusConfig, *, out, name: str,
                    cache_dir=None) -> Path:
    """Every take under ``roots`` (folders of takes, or take folders) as one voice."""
    takes = find_takes(list(roots))
    if not takes:
        raise DatasetError(f"no takes in {', '.join(map(str, roots))}")
    pieces = []
    for path in takes:
        prepared = prepare_take(path, cfg, cache_dir=cache_dir)
        pieces.append(Piece(path.name, prepared.label, gained_motion(prepared.motion, cfg),
                            prepared.audio))
    source = {"roots": [str(r) for r in roots], "takes": [str(p) for p in takes]}
    return write_corpus(pieces, voice_shape(cfg), corpus, name=name, out=out,
                        source={"data": source})


def corpus_config(args) -> CorpusConfig:
    overrides = {f"{key}": value for key, value in (
        ("max_seconds", args.max_seconds), ("sample_format", args.sample_format),
        ("dims", args.dims), ("continuity", args.continuity)) if value is not None}
    base = CorpusConfig(max_seconds=HOST_MAX_SECONDS)
    return with_overrides(base, overrides) if overrides else base


def add_corpus_options(parser) -> None:
    parser.add_argument("--max-seconds", type=float, dest="max_seconds",
                        help=f"most seconds of takes kept (default {HOST_MAX_SECONDS:g})")
    parser.add_argument("--sample-format", dest="sample_format", choices=("int16", "mulaw"),
                        help="how the audio is kept (default int16)")
    parser.add_argument("--dims", type=int, help="dimensions of the motion index (default 24)")
    parser.add_argument("--continuity", type=float,
                        help="how readily the recording plays on (default 0.5)")


def add_commands(subparsers) -> None:
    """Add ``corpus`` to a ``python -m train_host`` parser."""
    parser = subparsers.add_parser(
        "corpus", help="a corpus voice: the takes' own sound, chosen live by motion")
    parser.add_argument("data", nargs="+", metavar="DATA", help="folders of takes, or take folders")
    parser.add_argument("--out", required=True, help="the bundle to write (.dsb)")
    parser.add_argument("--name", help="the voice's name (default: the file's stem)")
    parser.add_argument("--config", help="training config whose frame rate, window, segment "
                                         "and motion gain to share (default: config/train.yaml)")
    add_corpus_options(parser)
    add_cache_option(parser)
    parser.set_defaults(func=_corpus_command)


def _corpus_command(args) -> int:
    from train_host.config import load_train_config

    cfg = load_train_config(args.config)
    out = Path(args.out)
    path = build_from_data(args.data, cfg, corpus_config(args), out=out,
                           name=args.name or out.stem, cache_dir=cache_dir_option(args.cache))
    from device.bundle import read_bundle

    print(read_bundle(path).manifest.describe())
    print(f"wrote {path}")
    return 0

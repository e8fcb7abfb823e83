"""Leave-one-take-out cross-validation: how the model does on each take it never saw.

For every take under the data folders, a model is trained on all the other takes
(``train.train``, validation split among those as the config says), exported to
int8 (``export.export``) and evaluated on the held-out take (``evaluate``, with the
fold's training takes as the baselines' data). Each fold writes its run folder,
its bundle and, only once complete, its result (``result.json``, written
atomically) under the output folder; a rerun skips the folds that have a result.

It trains models, so it imports TensorFlow (when a fold runs); it never modifies a take.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from device.errors import DanceSamplerError
from train_host.dataset import (DatasetError, add_cache_option, cache_dir_option, find_takes,
                                prepare_take)
from train_host.evaluate import format_takes, pool_takes, run_evaluation

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"

class CrossvalError(DanceSamplerError, ValueError):
    """Cross-validation cannot run as asked; the message names what is wrong."""


def crossval(data_roots: list[str | os.PathLike], cfg, *, out: str | os.PathLike | None = None,
             init_from=None, cache_dir: str | os.PathLike | None = None,
             corpus=None, notes: str | None = None) -> dict:
    """Run (or resume) every fold; return ``{"name", "out", "folds": [...], "pooled":
    {"metrics", "reference"}}``. ``cfg`` is a ``TrainConfig``; ``init_from`` a
    ``train.Run`` every fold is fine-tuned from. With ``corpus`` (a
    ``device.config.CorpusConfig``) each fold builds a corpus voice from the other
    takes instead of training a model (``train_host.corpus``); with ``notes`` (a method
    of ``device.notes``) every fold plays the same notes voice, which learns nothing,
    and its baselines come from the other takes."""
    from train_host.train import config_hash

    takes = _takes(data_roots, cfg, cache_dir)
    name = config_hash(cfg)
    if corpus is not None:
        name += "-corpus-" + hashlib.sha256(json.dumps(dataclasses.asdict(corpus),
                                                       sort_keys=True).encode()).hexdigest()[:6]
    if notes is not None:
        name += f"-notes-{notes}"
    if init_from is not None:
        name += "-from-" + weights_digest(init_from)
    out = Path(out) if out is not None else Path("out") / "crossval" / name
    bar = _progress_bar(len(takes))
    folds = []
    started = time.monotonic()
    for i, take in enumerate(takes):
        others = [p for p in takes if p != take]
        folder = out / f"{i + 1:02d}-{take.name}"
        result = _finished(folder, take, others, name)
        if result is None:
            result = _run_fold(folder, take, others, cfg, name, init_from, cache_dir, corpus,
                               notes)
            done = "done"
        else:
            done = "already done"
        folds.append(result)
        model = result["metrics"]["model"]
        if bar is not None:
            bar.update(i + 1, [("log_mel", model["log_mel_distance_db"])])
        else:
            elapsed = time.monotonic() - started
            log.info("fold %d/%d, take %s: %s (model log-mel %.2f dB, %.0f s so far, about "
                     "%.0f s left)", i + 1, len(takes), take.name, done,
                     model["log_mel_distance_db"], elapsed,
                     elapsed / (i + 1) * (len(takes) - i - 1))
    metrics, reference = pool_takes([score for fold in folds for score in fold["scores"]])
    return {"name": name, "out": str(out), "folds": folds,
            "pooled": {"metrics": metrics, "reference": reference}}


def weights_digest(run) -> str:
    """Six hex digits of a hash over a run's weights (and its input scale): the model
    the folds are fine-tuned from. Its contents, not its path, so a run rebuilt in
    the same folder never resumes folds made from the old weights, and one moved
    still resumes its own."""
    digest = hashlib.sha256(repr(float(run.info["input_scale"])).encode())
    for part in sorted(run.vae.parts):
        for weights in run.vae.parts[part].get_weights():
            digest.update(str(weights.shape).encode())
            digest.update(weights.astype("<f4").tobytes())
    return digest.hexdigest()[:6]


def _takes(roots, cfg, cache_dir) -> list[Path]:
    """The takes, each long enough to be held out, or one line saying what is wrong."""
    if not roots:
        raise CrossvalError("no data: pass folders of takes")
    try:
        takes = find_takes(list(roots))
    except DatasetError as exc:
        raise CrossvalError(f"data: {exc}") from None
    where = ", ".join(map(str, roots))
    if len(takes) < 2:
        raise CrossvalError(f"cross-validation needs at least 2 takes (one held out, the "
                            f"rest to train on); found {len(takes)} in {where}")
    for path in takes:
        try:
            prepared = prepare_take(path, cfg, cache_dir=cache_dir)
        except DanceSamplerError as exc:
            raise CrossvalError(f"take {path}: {exc}") from None
        if not prepared.example_count(cfg):
            raise CrossvalError(
                f"take {path.name}: {prepared.seconds:.2f} s is too short to be held out (one "
                f"example needs {cfg.data.window_frames} frames and {cfg.data.segment_seconds:g} "
                "s of sound); move it out of the data folders")
    return takes


def _finished(folder: Path, take: Path, others: list[Path], name: str) -> dict | None:
    """A finished fold's result, if it is there and was made the same way."""
    path = folder / RESULT_FILE
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CrossvalError(f"{path}: cannot read this fold's result ({exc}); delete it to "
                            "run the fold again") from None
    # Takes by folder name, so a data folder moved as a whole still resumes.
    trained_on = [Path(p).name for p in result.get("train_takes") or []]
    if (result.get("name"), trained_on) != (name, [p.name for p in others]):
        raise CrossvalError(f"{path}: this fold was made with another config or other "
                            "takes; pass another --out, or delete the folder")
    return result


def _run_fold(folder: Path, take: Path, others: list[Path], cfg, name: str, init_from,
              cache_dir, corpus=None, notes=None) -> dict:
    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    if notes is not None:
        from device.notes import default_params, write_notes
        from train_host.corpus import voice_shape

        shape = voice_shape(cfg)
        bundle = folder / "model.dsb"
        bundle.unlink(missing_ok=True)   # a fold cut off before its result: made afresh
        write_notes(shape, default_params(shape, notes), name=f"crossval-{take.name}",
                    out=bundle)
        summary = {"validation_sessions": []}
    elif corpus is not None:
        from train_host.corpus import build_from_data

        try:
            bundle = build_from_data(others, cfg, corpus, out=folder / "model.dsb",
                                     name=f"crossval-{take.name}", cache_dir=cache_dir)
        except DanceSamplerError as exc:
            raise CrossvalError(f"corpus without {take.name}: {exc}") from None
        summary = {"validation_sessions": []}
    else:
        from train_host.dataset import build_dataset
        from train_host.export import export
        from train_host.train import train

        try:
            train_set, validation, summary = build_dataset(others, cfg, cache_dir=cache_dir)
        except DatasetError as exc:
            raise CrossvalError(f"training takes without {take.name}: {exc}") from None
        # TensorFlow's converter prints to stdout, which is the JSON's alone.
        with contextlib.redirect_stdout(sys.stderr):
            run = train(cfg, train_set, validation, folder / "run", data_summary=summary,
                        init_from=init_from)
            bundle = export(run, folder / "model.dsb", name=f"crossval-{take.name}")
    evaluation = run_evaluation(bundle, [take], others, cache_dir=cache_dir, seed=cfg.seed,
                                keep_excerpt=False)
    result = {"name": name, "take": take.name, "path": str(take),
              "train_takes": [str(p) for p in others],
              "validation_takes": summary["validation_sessions"],
              "seconds": round(time.monotonic() - started, 1),
              "metrics": evaluation.metrics, "reference": evaluation.reference,
              "scores": [t.scores() for t in evaluation.takes]}
    tmp = folder / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, folder / RESULT_FILE)
    return result


def _progress_bar(folds: int):
    """A bar over the folds on a terminal; None otherwise (a log line per fold then)."""
    if not sys.stderr.isatty():
        return None
    import keras

    return keras.utils.Progbar(folds, stateful_metrics=["log_mel"])


def format_crossval(result: dict) -> str:
    """A row per held-out take and the pooled row."""
    rows = [(fold["take"], fold["metrics"], fold["reference"]) for fold in result["folds"]]
    pooled = result["pooled"]
    return (format_takes(rows, pooled["metrics"], pooled["reference"])
            + " Folds in " + result["out"])


def add_commands(subparsers) -> None:
    """Add ``crossval`` to a ``python -m train_host`` parser."""
    parser = subparsers.add_parser(
        "crossval", help="train on all takes but one, evaluate on that one, for every take")
    parser.add_argument("data", nargs="+", metavar="DATA",
                        help="folders of takes, or take folders")
    parser.add_argument("--config", help="training config (default: config/train.yaml)")
    parser.add_argument("--init-from", metavar="RUN_OR_BUNDLE",
                        help="fine-tune this run (or the run a bundle came from) in every fold")
    parser.add_argument("--out", help="folder of the folds (default: out/crossval/<name>)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: the folds and the pooled metrics")
    parser.add_argument("--seed", type=int, help="the config's seed, overridden")
    parser.add_argument("--voice", choices=("model", "corpus", "notes", "notes-heuristic"),
                        default="model",
                        help="model: train one per fold; corpus: build a corpus voice from "
                             "the other takes (seconds a fold, no training); notes, "
                             "notes-heuristic: the notes voice or its heuristic baseline, "
                             "which learn nothing (docs/notes.md)")
    from train_host.corpus import add_corpus_options

    add_corpus_options(parser)
    add_cache_option(parser)
    parser.set_defaults(func=_crossval_command)


def _crossval_command(args) -> int:
    from device.config import with_overrides
    from train_host.config import load_train_config
    from train_host.train import find_run

    cfg = load_train_config(args.config)
    if args.seed is not None:
        cfg = with_overrides(cfg, {"seed": args.seed})
    cache_dir = cache_dir_option(args.cache)
    init_from = find_run(args.init_from) if args.init_from else None
    corpus = None
    if args.voice == "corpus":
        from train_host.corpus import corpus_config

        corpus = corpus_config(args)
    notes = {"notes": "motion", "notes-heuristic": "heuristic"}.get(args.voice)
    result = crossval(args.data, cfg, out=args.out, init_from=init_from, cache_dir=cache_dir,
                      corpus=corpus, notes=notes)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_crossval(result))
    return 0


"""``python -m train_host``: train, export, evaluate and rebuild models on the host.

Subcommands import TensorFlow only when they run. Errors meant for people print
one line to stderr and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("train_host")

# The factory model's fixed build date: rebuilding it gives the same bytes.
FACTORY_CREATED = "2026-01-01T00:00:00Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_host",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model on takes (--data), or on the synthetic demo takes")
    train.add_argument("--config", help="training config (default: config/train.yaml)")
    train.add_argument("--out", help="run folder to write (default: runs/<config hash>)")
    train.add_argument("--init-from", metavar="RUN_OR_BUNDLE",
                       help="fine-tune this run (or the run a bundle came from) on the takes")
    train.add_argument("--data", nargs="+", metavar="DIR",
                       help="folders of takes, or take folders, to train on; validation "
                            "holds out whole takes (default: the synthetic demo takes)")
    from train_host.dataset import add_cache_option

    add_cache_option(train)
    train.set_defaults(func=_train)

    export = commands.add_parser("export", help="write the int8 bundle of a trained run")
    export.add_argument("run", help="run folder written by train")
    export.add_argument("--out", required=True, help="bundle file to write (.dsb)")
    export.add_argument("--name", help="model name in the manifest (default: the file's stem)")
    export.set_defaults(func=_export)

    default = commands.add_parser("default-model",
                                  help="rebuild the factory model from the demo takes, reproducibly")
    default.add_argument("--config", help="training config (default: config/train.yaml)")
    default.add_argument("--out", default="models/default.dsb", help="bundle file to write")
    default.add_argument("--run", help="run folder (default: runs/default-<config hash>)")
    default.set_defaults(func=_default_model)

    bench = commands.add_parser("bench-train",
                                help="time training on HOURS of demo takes with the config")
    bench.add_argument("--hours", type=float, default=1.0, help="hours of takes (default 1)")
    bench.add_argument("--config", help="training config (default: config/train.yaml)")
    bench.add_argument("--init-from", metavar="RUN_OR_BUNDLE",
                       help="time fine-tuning this run (or the run a bundle came from), as "
                            "with config/finetune.yaml, instead of training from scratch")
    bench.set_defaults(func=_bench_train)

    from train_host.importers import add_commands as add_import_commands

    add_import_commands(commands)
    from train_host.evaluate import add_commands as add_evaluate_commands

    add_evaluate_commands(commands)
    from train_host.crossval import add_commands as add_crossval_commands

    add_crossval_commands(commands)
    from train_host.corpus import add_commands as add_corpus_commands

    add_corpus_commands(commands)
    from train_host.listen import add_commands as add_listen_commands

    add_listen_commands(commands)

    args = parser.parse_args(argv)
    missing = missing_host_tools(args)
    if missing:
        print(f"dancesampler: error: python -m train_host {args.command} needs the host tools "
              f"({', '.join(missing)} not installed); install them with: make host",
              file=sys.stderr)
        return 1
    from train_host.console import DEBUG_ENV

    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if args.debug else "3")
    from device.cli import dispatch

    return dispatch(args)


# What each command imports beyond the box's own packages (pyproject's "host" extra).
_TRAINING = ("tensorflow", "keras", "matplotlib", "av")
HOST_TOOLS = {"train": _TRAINING, "export": ("tensorflow", "keras"),
              "default-model": _TRAINING, "bench-train": _TRAINING, "crossval": _TRAINING,
              "import-video": ("av",), "import-mocap": ("av",), "listen": ("av",)}


def missing_host_tools(args) -> list[str]:
    """The host packages ``args``' command needs that are not installed, found before
    any work starts (a report must not fail after all its scoring)."""
    import importlib.util

    needed = list(HOST_TOOLS.get(args.command, ()))
    if args.command == "crossval" and getattr(args, "voice", "model") == "corpus":
        needed = ["av"]
    if args.command == "evaluate" and getattr(args, "report", None):
        needed.append("matplotlib")
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _train_demo(config_path, out: Path | None, init_from=None):
    from train_host.config import load_train_config
    from train_host.demo_data import demo_examples
    from train_host.train import train

    cfg = load_train_config(config_path)
    train_set, validation, summary = demo_examples(cfg)
    log.info("demo data: %s", summary)
    return train(cfg, train_set, validation, _run_folder(out, cfg), data_summary=summary,
                 init_from=init_from)


def _run_folder(out: Path | None, cfg) -> Path:
    from train_host.train import config_hash

    return out if out is not None else Path("runs") / config_hash(cfg)


def _train_sessions(config_path, roots: list[str], cache: str | None, out: Path | None,
                    init_from=None):
    from train_host.config import load_train_config
    from train_host.dataset import build_dataset, cache_dir_option
    from train_host.train import train

    cfg = load_train_config(config_path)
    train_set, validation, summary = build_dataset([Path(root) for root in roots], cfg,
                                                   cache_dir=cache_dir_option(cache))
    log.info("data: %d take(s), %.1f min; validation: %s", summary["takes"],
             summary["seconds"] / 60, ", ".join(summary["validation_sessions"]) or "none")
    return train(cfg, train_set, validation, _run_folder(out, cfg), data_summary=summary,
                 init_from=init_from)


def _train(args) -> int:
    from train_host.train import find_run

    out = Path(args.out) if args.out else None
    init_from = find_run(args.init_from) if args.init_from else None
    if args.data:
        run = _train_sessions(args.config, args.data, args.cache, out, init_from)
    else:
        run = _train_demo(args.config, out, init_from)
    print(f"trained {run.path} in {run.info['train_seconds']} s")
    return 0


def _bench_train(args) -> int:
    import json
    import tempfile
    import time

    from device.config import with_overrides
    from train_host.config import load_train_config
    from train_host.demo_data import demo_examples
    from train_host.train import find_run, train

    cfg = with_overrides(load_train_config(args.config),
                         {"demo.seconds": float(args.hours * 3600)})
    init_from = find_run(args.init_from) if args.init_from else None
    started = time.monotonic()
    train_set, validation, _ = demo_examples(cfg)
    prepared = time.monotonic() - started
    with tempfile.TemporaryDirectory() as folder:
        run = train(cfg, train_set, validation, Path(folder) / "run", init_from=init_from)
    print(json.dumps({"hours_of_takes": args.hours, "fine_tuned_from": args.init_from,
                      "examples": len(train_set),
                      "validation_examples": len(validation), "steps": run.info["steps"],
                      "epochs": len(run.info["history"]), "prepare_seconds": round(prepared, 1),
                      "train_seconds": run.info["train_seconds"],
                      "threads": cfg.training.threads}, indent=2))
    return 0


def _export(args) -> int:
    from train_host.export import export

    path = export(args.run, args.out, name=args.name)
    print(f"wrote {path}")
    return 0


def _default_model(args) -> int:
    from train_host.config import load_train_config
    from train_host.export import export
    from train_host.train import config_hash

    cfg = load_train_config(args.config)
    run_dir = Path(args.run or f"runs/default-{config_hash(cfg)}")
    replaced = _graph_digest(args.out)
    run = _train_demo(args.config, run_dir)
    created = None if "SOURCE_DATE_EPOCH" in os.environ else FACTORY_CREATED
    path = export(run, args.out, name="default", created=created)
    print(f"wrote {path}")
    _say_reproduced(replaced, _graph_digest(path))
    _check_pitch(path)
    return 0


def _graph_digest(path: str | Path) -> str | None:
    """The sha256 of a model bundle's graph, or None where there is no readable one."""
    from device.bundle import PERFORMER, read_bundle
    from device.errors import BundleError

    try:
        return read_bundle(path).manifest.members[PERFORMER]["sha256"]
    except (BundleError, KeyError):
        return None


def _say_reproduced(replaced: str | None, built: str) -> None:
    """Whether the rebuild gave the graph of the bundle it replaced: the same recipe on
    another processor trains another model (docs/model.md, "Rebuilt on another
    processor")."""
    if replaced == built:
        print(f"the same graph as the bundle it replaced (sha256 {built[:8]}…)")
    elif replaced is not None:
        log.warning("another graph than the bundle it replaced (sha256 %s… now %s…): this "
                    "machine trains another model from the same recipe, and what was "
                    "measured on or fine-tuned from the old one is not this one's",
                    replaced[:8], built[:8])


def _check_pitch(path: Path) -> None:
    """Say how far the rebuild's pitch follows the demo instrument's, on dances no
    reported figure uses: the same recipe on another processor trains elsewhere
    (docs/model.md, "Rebuilding the factory model")."""
    from train_host.listen import PITCH_TARGET, VALIDATION_SEEDS, pitch_following

    corr, ratio = pitch_following(path)
    print(f"pitch-class movement against the demo instrument on {len(VALIDATION_SEEDS)} "
          f"dances it never trained on (seeds {', '.join(map(str, VALIDATION_SEEDS))}): "
          f"corr {corr:.2f}, {ratio:.2f} as much movement (targets: at least "
          f"{PITCH_TARGET:g} each)")
    if min(corr, ratio) < PITCH_TARGET:
        log.warning("this rebuild's pitch follows the dance less than the targets: "
                    "try another training seed (`seed:` in the config) and compare")


if __name__ == "__main__":
    sys.exit(main())

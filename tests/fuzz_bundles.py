"""Malformed bundles, generated from the factory bundle, for the reader and the
runtimes: ``python -m tests.fuzz_bundles [--cases N] [--seed S]`` runs a campaign
and prints how many cases were tried, refused cleanly, accepted and crashed
(``tests/test_bundle_fuzz.py`` runs a small one in the suite).

Each case is a bundle file's bytes: cut short, bit-flipped, with a manifest field
of every wrong type, a decompression bomb, or a graph corrupted with its checksum
recomputed so that it reaches the runtime. A case passes if ``read_bundle``
either accepts it or raises ``BundleError`` with one line naming the file, and a
graph that was read runs in a child (``probe_graph``) with the same outcome:
anything else (another exception, a crash of this process) is a failure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from device.bundle import MANIFEST, PERFORMER, read_bundle
from device.errors import BundleError
from device.runtime import RUNTIMES, probe_graph

ROOT = Path(__file__).resolve().parents[1]
FACTORY = ROOT / "models" / "default.dsb"
_WRONG = (None, True, "x", -1, 0, 1e308, [], {}, [[[[]]]], "9" * 400)


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _with(manifest: dict, graph: bytes) -> bytes:
    manifest = json.loads(json.dumps(manifest))
    manifest["members"] = {PERFORMER: {"sha256": hashlib.sha256(graph).hexdigest(),
                                       "bytes": len(graph)}}
    return _zip({MANIFEST: json.dumps(manifest).encode(), PERFORMER: graph})


def _paths(data: dict, prefix: tuple = ()) -> Iterator[tuple]:
    for key, value in data.items():
        yield prefix + (key,)
        if isinstance(value, dict) and key != "training":
            yield from _paths(value, prefix + (key,))


def cases(seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """(what, bundle bytes), endlessly, in a seeded mixture of kinds."""
    rng = random.Random(seed)
    good = FACTORY.read_bytes()
    with zipfile.ZipFile(FACTORY) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        graph = archive.read(PERFORMER)
    keys = list(_paths({k: v for k, v in manifest.items() if k != "members"}))
    while True:
        kind = rng.choice(("cut", "flip", "field", "bomb", "graph", "json"))
        if kind == "cut":
            at = rng.randrange(len(good))
            yield f"cut at {at}", good[:at]
        elif kind == "flip":
            data = bytearray(good)
            for _ in range(rng.choice((1, 4, 64))):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield "bits flipped", bytes(data)
        elif kind == "field":
            path, value = rng.choice(keys), rng.choice(_WRONG)
            changed = json.loads(json.dumps(manifest))
            node = changed
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            yield f"{'.'.join(path)} = {value!r:.30}", _with(changed, graph)
        elif kind == "bomb":
            size = rng.choice((17 << 20, 200 << 20))
            yield f"{size >> 20} MB of zeros as the graph", _with(manifest, bytes(size))
        elif kind == "graph":
            data = bytearray(graph)
            where = rng.choice((lambda: rng.randrange(64), lambda: rng.randrange(len(data))))
            for _ in range(rng.choice((1, 8, 256))):
                data[where()] = rng.randrange(256)
            if rng.random() < 0.2:
                data = data[:rng.randrange(len(data))]
            yield "graph corrupted, checksum fixed", _with(manifest, bytes(data))
        else:
            text = rng.choice(("[" * 100000, '{"format": NaN}', "\xff\xfe", "{}", "[]",
                               '{"a": ' * 50000))
            yield f"manifest {text[:12]!r}…", _zip({MANIFEST: text.encode("utf-8", "replace"),
                                                  PERFORMER: graph})


def run_case(data: bytes, where: Path, runtimes: tuple[str, ...]) -> str:
    """'accepted' or 'refused'; raises AssertionError on anything else."""
    where.write_bytes(data)
    try:
        bundle = read_bundle(where)
    except BundleError as exc:
        _one_line(exc, where)
        return "refused"
    outcome = "accepted"
    for runtime in runtimes:
        try:
            probe_graph(bundle.performer, runtime=runtime, where=str(where),
                        audio=bundle.manifest.audio,
                        latent_size=bundle.manifest.latent_output_size)
        except BundleError as exc:
            _one_line(exc, where)
            outcome = "refused"
    return outcome


def _one_line(exc: BundleError, where: Path) -> None:
    text = str(exc)
    assert "\n" not in text and text.startswith(str(where)), repr(text)
    assert len(text) < 600, text[:200]


def installed_runtimes() -> tuple[str, ...]:
    import importlib.util

    return tuple(r for r in RUNTIMES if importlib.util.find_spec(r) is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_bundles")
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/fuzz")
    args = parser.parse_args(argv)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    counts, runtimes = Counter(), installed_runtimes()
    for i, (what, data) in zip(range(args.cases), cases(args.seed)):
        try:
            counts[run_case(data, folder / f"case{i}.dsb", runtimes)] += 1
        except Exception as exc:  # noqa: BLE001 - counted and shown, the campaign goes on
            counts["crashed"] += 1
            print(f"case {i} ({what}): {type(exc).__name__}: {exc}"[:300])
    print(f"bundles: {sum(counts.values())} cases tried in {', '.join(runtimes)}: "
          f"{counts['refused']} refused cleanly, {counts['accepted']} accepted, "
          f"{counts['crashed']} crashed")
    return 1 if counts["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())

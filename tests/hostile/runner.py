"""Run hostile-corpus cases through the secpack library in this one process and
report, as JSON on stdout, each case's outcome for each way of reading it
(``verify``, ``open`` = extract, ``load`` = open_package + state_dict/read_file),
the wall-clock and CPU seconds each took, what changed around the output path,
and the process's peak RSS.

    .venv/bin/python tests/hostile/runner.py CORPUS_DIR [--ids a,b] [--ops verify,open]

``ru_maxrss`` is a high-water mark for the whole process: if it stays under a
bound at the end, every case stayed under it. test_corpus.py runs this script
in a subprocess with the venv's interpreter, so that the measurement covers
the library alone (no pytest, no earlier tests).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

OPS = ("verify", "open", "load")
OK = "ok"


# --- shared with test_corpus.py ---------------------------------------------------------------


def prepare_output(parent: Path, kind: str) -> Path:
    """Create what a case plants around its -o path under ``parent``; return the path."""
    out = parent / "out"
    victim = parent / "victim"
    if kind == "fresh":
        pass
    elif kind == "symlink-to-dir":
        victim.mkdir()
        (victim / "keep.txt").write_text("keep\n")
        out.symlink_to(victim)
    elif kind == "symlink-to-empty-dir":
        victim.mkdir()
        out.symlink_to(victim)
    elif kind == "dangling-symlink":
        out.symlink_to(parent / "nowhere")
    elif kind == "dir-with-symlink":
        victim.mkdir()
        (victim / "keep.txt").write_text("keep\n")
        out.mkdir()
        (out / "config.json").symlink_to(victim / "keep.txt")
    else:
        raise ValueError(kind)
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (symlinks not followed): path -> what it is."""
    found: dict[str, str] = {}
    for here, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(here) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def prepare_state(state_dir: Path, text: str | None) -> None:
    state_dir.mkdir(parents=True)
    if text is not None:
        (state_dir / "versions.json").write_text(text)


def scratch_root() -> str | None:
    """tmpfs when there is one: open() fsyncs, and a busy disk would time the disk."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def load_cases(corpus: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((corpus / "cases.json").read_text())
    return cases


# --- the library calls ------------------------------------------------------------------------


def _outcome(call: Callable[[], object]) -> str:
    from secpack.errors import SecpackError

    try:
        call()
    except SecpackError as err:
        return err.code
    except Exception as exc:  # a bug: anything that is not a SecpackError
        return f"<{type(exc).__name__}: {exc}>"[:300]
    return OK


def _policy(corpus: Path, rec: dict[str, Any]) -> Any:
    from secpack.api.keyfiles import resolve_policy

    policy = str(corpus / rec["policy"]) if rec["policy"] else None
    return resolve_policy([str(corpus / t) for t in rec["trust"]], policy)


def _verify(corpus: Path, rec: dict[str, Any], out: Path) -> None:
    from secpack.api.verify import verify

    verify(str(corpus / rec["package"]), _policy(corpus, rec), expected_name=rec["name"])


def _open(corpus: Path, rec: dict[str, Any], out: Path) -> None:
    from secpack.api.extract import extract
    from secpack.api.keyfiles import load_identity

    extract(
        str(corpus / rec["package"]),
        str(out),
        identities=[load_identity(str(corpus / rec["identity"]))],
        policy=_policy(corpus, rec),
        expected_name=rec["name"],
    )


def _load(corpus: Path, rec: dict[str, Any], out: Path) -> None:
    """Every component's tensors and files through ``state_dict``, and again, on a
    package opened afresh (a file's checks are made once per package), through
    ``iter_tensors``: the two ways decode in different orders and batches, and
    must come to the same outcome."""
    import secpack

    def read(iterate: bool) -> None:
        with secpack.open_package(
            corpus / rec["package"],
            identity=str(corpus / rec["identity"]),
            policy=_policy(corpus, rec),
            expected_name=rec["name"],
        ) as pkg:
            for info in pkg.components:
                files = pkg.files(info.name)
                if info.kind in ("weights", "adapter"):
                    if iterate:
                        for _ in pkg.iter_tensors(info.name):
                            pass
                    else:
                        pkg.state_dict(info.name)
                for f in files:
                    pkg.read_file(info.name, f.path)

    whole = _outcome(lambda: read(False))
    iterated = _outcome(lambda: read(True))
    if whole != iterated:
        raise AssertionError(f"state_dict gives {whole}, iter_tensors {iterated}")
    read(False)  # the outcome itself, as the caller records it


CALLS = {"verify": _verify, "open": _open, "load": _load}


def run_case(
    corpus: Path, rec: dict[str, Any], ops: tuple[str, ...], scratch: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for op in ops:
        work = scratch / f"{rec['id']}-{op}"
        state = work / "state"
        prepare_state(state, rec["state"])
        parent = work / "parent"
        parent.mkdir()
        out = prepare_output(parent, rec["outdir"] if op == "open" else "fresh")
        before = snapshot(parent)
        os.environ["SECPACK_STATE_DIR"] = str(state)
        started, cpu = time.perf_counter(), time.process_time()
        code = _outcome(lambda op=op, out=out: CALLS[op](corpus, rec, out))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        after = snapshot(parent)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        result[op] = {
            "code": code,
            "seconds": round(seconds, 4),
            "cpu": round(cpu, 4),
            "changed": changed,
        }
        shutil.rmtree(work)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--ids", default="", help="comma-separated case ids (default: all)")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated ways of reading")
    args = parser.parse_args(argv)
    ops = tuple(o for o in args.ops.split(",") if o)
    if not set(ops) <= set(OPS):
        parser.error(f"--ops must be among {OPS}")
    wanted = {i for i in args.ids.split(",") if i}
    cases = [c for c in load_cases(args.corpus) if not wanted or c["id"] in wanted]
    if wanted and len(cases) != len(wanted):
        parser.error("unknown case id(s)")
    warnings.simplefilter("ignore")  # DtypeWarning for BF16 without ml_dtypes, say
    # Imported before the first timing, so that no case pays for them.
    for module in ("secpack.api.extract", "secpack.api.loader", "secpack.api.verify"):
        importlib.import_module(module)

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report: dict[str, Any] = {"cases": {}}
    with tempfile.TemporaryDirectory(prefix="hostile-run-", dir=scratch_root()) as tmp:
        for rec in cases:
            report["cases"][rec["id"]] = run_case(args.corpus, rec, ops, Path(tmp))
    report["baseline_rss_kib"] = baseline
    report["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump(report, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

"""The runtime loader (``secpack.open_package``) on one data set, side by side with
``safetensors.numpy.load_file``: a full load, one tensor, and their peak RSS.

Every measurement is a process of its own (``children.py``), so its peak RSS is
its own and nothing is cached between runs but the page cache. The package is
sealed once per data set with the default settings (signed, encrypted to one
recipient), like the ``secpack seal`` rows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from anchors import Keys, Tools
from paths import CHILDREN, rm
from procs import cmd, run_child, settle
from results import DatasetResult, LoaderResult, MiB, Series
from shards import NUMPY_DTYPES, numpy_shards, shard_tensors, shards

__all__ = ["ONE_TENSOR_RUNS", "PICK_BYTES", "bench_loader"]

# Fresh processes per round for the one-tensor figures: each run is short (well
# under a second), so a few per round give a median that start-up noise cannot move.
ONE_TENSOR_RUNS = 5
# The one tensor: the one nearest this size (a typical projection matrix).
PICK_BYTES = 4 * MiB


def _pick(tensors: list[dict[str, object]]) -> dict[str, object]:
    """The tensor nearest PICK_BYTES; numpy-native dtypes first, then manifest order."""
    ranked = sorted(
        enumerate(tensors),
        key=lambda it: (
            abs(int(str(it[1]["length"])) - PICK_BYTES),
            it[1]["dtype"] not in NUMPY_DTYPES,
            it[0],
        ),
    )
    return ranked[0][1]


def _seal(tools: Tools, keys: Keys, source: Path, pkg: Path) -> int:
    """Seal ``source`` to ``pkg`` with the default settings; the package size."""
    keyopts = cmd("--sign-key", keys.sign, "--recipient", keys.recipient_pub)
    settle()
    run_child(cmd(tools.secpack, "seal", source, "-o", pkg, *keyopts, "--json"))
    settle()
    return pkg.stat().st_size


def _link_tree(files: list[Path], root: Path, into: Path) -> Path:
    """A directory holding ``files`` (paths under ``root``): hard links, else copies."""
    for src in files:
        dst = into / src.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return into


def _source_sha256(root: Path, name: str) -> str | None:
    """sha256 of tensor ``name``'s bytes in the input's safetensors files."""
    for path in shards(root):
        for t in shard_tensors(path):
            if t.name == name:
                with path.open("rb") as f:
                    f.seek(t.start)
                    return hashlib.sha256(f.read(t.end - t.start)).hexdigest()
    return None


def bench_loader(
    ds: DatasetResult, tools: Tools, keys: Keys, work: Path, runs: int, log: Callable[[str], None]
) -> LoaderResult:
    scratch = work / f"{ds.name}-loader"
    rm(scratch)
    scratch.mkdir(parents=True)
    child = (tools.python, str(CHILDREN))
    keyargs = cmd(keys.recipient, keys.sign_pub)
    pkg = scratch / "model.spk"
    log(f"  [{ds.name}] loader: sealing the package (default settings)")
    package_bytes = _seal(tools, keys, ds.path, pkg)
    listing = run_child(cmd(*child, "secpack-tensors", pkg, *keyargs)).json()
    tensors = listing.get("tensors")
    if not isinstance(tensors, list) or not tensors:
        raise RuntimeError(f"{ds.name}: the package has no tensors to load")
    pick = _pick(tensors)
    imported = Path(str(listing.get("secpack_file")))
    if work not in imported.parents:
        raise RuntimeError(f"the children import secpack from {imported}, not the frozen copy")
    decoded = sum(int(str(t["length"])) for t in tensors)

    # Like with like: numpy (without ml_dtypes) cannot hold bf16, so safetensors loads
    # only some shards. secpack then loads a package sealed from just those shards.
    loadable, skipped = numpy_shards(ds.path)
    fp32_pkg: Path | None = None
    fp32_package_bytes: int | None = None
    if skipped and loadable:
        subset = _link_tree(loadable, ds.path, scratch / "numpy-shards")
        fp32_pkg = scratch / "numpy-shards.spk"
        log(f"  [{ds.name}] loader: sealing the {len(loadable)} numpy-loadable shard(s) alone")
        fp32_package_bytes = _seal(tools, keys, subset, fp32_pkg)
        rm(subset)

    full = Series("secpack open_package + state_dict")
    one = Series(f"secpack open_package + tensor({pick['name']})")
    st = Series("safetensors.numpy.load_file")
    fp32 = Series("secpack open_package + state_dict, numpy-loadable shards") if fp32_pkg else None
    for rnd in range(1, runs + 1):
        log(f"  [{ds.name}] loader round {rnd}/{runs}")
        # One after another in each round, so that machine noise spreads over all.
        settle()
        st.add(run_child(cmd(*child, "safetensors-state-dict", ds.path)))
        settle()
        full.add(run_child(cmd(*child, "secpack-state-dict", pkg, *keyargs)))
        if fp32 is not None and fp32_pkg is not None:
            settle()
            fp32.add(run_child(cmd(*child, "secpack-state-dict", fp32_pkg, *keyargs)))
        for _ in range(ONE_TENSOR_RUNS):
            settle()
            one.add(run_child(cmd(*child, "secpack-tensor", pkg, *keyargs, str(pick["name"]))))
    rm(scratch)

    result = LoaderResult(
        package_bytes=package_bytes,
        decoded_bytes=decoded,
        tensors=len(tensors),
        pick=pick,
        full=full,
        one=one,
        safetensors=st,
        fp32=fp32,
        fp32_package_bytes=fp32_package_bytes,
        fp32_decoded_bytes=int(fp32.median("decoded_bytes")) if fp32 else None,
        skipped_shards=[p.name for p in skipped],
    )
    _check(ds, result, log)
    return result


def _check(ds: DatasetResult, res: LoaderResult, log: Callable[[str], None]) -> None:
    """What the loader returned agrees with the input: sizes, and the one tensor's bytes."""
    problems: list[str] = []
    got = res.one.info.get("sha256")
    want = _source_sha256(ds.path, str(res.pick["name"]))
    if want is None:
        problems.append(f"tensor {res.pick['name']} is not in the input's safetensors files")
    elif got != want:
        problems.append(f"tensor({res.pick['name']}) returned bytes that differ from the input")
    if res.full.median("decoded_bytes") != res.decoded_bytes:
        problems.append(
            f"state_dict returned {res.full.median('decoded_bytes'):.0f} bytes of tensors, "
            f"the manifest lists {res.decoded_bytes}"
        )
    source_bytes = sum(t.end - t.start for p in shards(ds.path) for t in shard_tensors(p))
    if res.decoded_bytes != source_bytes:
        problems.append(
            f"the package lists {res.decoded_bytes} tensor bytes, the input has {source_bytes}"
        )
    if res.fp32 is not None and res.fp32.median("decoded_bytes") != res.safetensors.median(
        "bytes_in"
    ):
        problems.append("the numpy-loadable package and safetensors loaded different byte counts")
    warned = res.full.info.get("warnings")
    for warning in warned if isinstance(warned, list) else []:
        res.notes.append(f"secpack state_dict warned: {warning}")
    for p in problems:
        res.notes.append(f"**check failed**: {p}")
        log(f"    WARNING: {p}")
    if not problems:
        log("    loader checks OK: the one tensor is byte-identical to the input; sizes agree")

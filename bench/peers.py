"""secpack against its peers on one data set: plain zstd and ZipNN for size and
codec speed, safetensors for a plain load, model_signing for signing, each
beside secpack's seal / verify / open and its library load.

One process per tool and operation, all on the same files, one after another
within each round so that machine noise spreads over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from anchors import Keys, Tools
from inputs import same_tree
from paths import CHILDREN, PEER_CODECS, rm
from procs import Child, cmd, reported_seconds, run_child, settle
from results import DatasetResult, MiB, Row

from secpack.workers import worker_threads

__all__ = [
    "LOAD",
    "MS_SIGN",
    "MS_VERIFY",
    "OPEN",
    "SEAL",
    "SEAL_FAST",
    "SEAL_TMPFS",
    "STREAM",
    "STREAM_FAST",
    "ST_LOAD",
    "THREADS",
    "VERIFY",
    "ZIPNN",
    "ZSTD19_MAX_BYTES",
    "ZSTD_LEVELS",
    "bench_peers",
    "codec_label",
]

# The peers get as many threads as secpack takes by default for its 4 MiB
# segments: one per usable CPU, within its memory budget (2 on a 2-CPU machine).
THREADS = worker_threads(0, 4 * MiB)
ZSTD_LEVELS = (1, 3, 19)
# zstd -19 runs at 1-3 MB/s on float weights here: it is measured in the first
# round only, and on the small data sets only (on 1 GiB it would take ~10 minutes).
ZSTD19_MAX_BYTES = 100 * MiB

SEAL = "secpack seal"
VERIFY = "secpack verify --trust"
OPEN = "secpack open"
LOAD = "secpack open_package + state_dict"
STREAM = "secpack open_package + iter_tensors"
SEAL_TMPFS = "secpack seal, output on tmpfs"
SEAL_FAST = "secpack seal --level fast, output on tmpfs"
STREAM_FAST = "secpack iter_tensors, --level fast package"
# tmpfs for the seal row whose output costs no disk time (fsync there returns at
# once), comparable with the codecs' memory-to-memory figures.
TMPFS = Path("/dev/shm")
MS_SIGN = "model_signing sign key"
MS_VERIFY = "model_signing verify key"
ST_LOAD = "safetensors.numpy.load_file"
ZIPNN = "ZipNN"


def codec_label(codec: str, op: str) -> str:
    """Row label of a codec peer: 'zstd -3 -T2' / 'ZipNN -T2', '... decompress'."""
    name = ZIPNN if codec == "zipnn" else f"zstd -{codec.removeprefix('zstd-')}"
    return f"{name} -T{THREADS}" if op == "compress" else f"{name} decompress"


def _rows(ds: DatasetResult, tools: Tools) -> dict[str, Row]:
    n = ds.original
    rows = [
        Row(SEAL, "seal", n, note="zstd-grouped + AES-256-GCM + Ed25519, output fsynced"),
        Row(VERIFY, "verify", n, note="signature + every segment digest"),
        Row(OPEN, "open", n, note="verify + decrypt + decode + write + fsync"),
        Row(SEAL_TMPFS, "seal", n, note="the same seal, written to /dev/shm: no disk time"),
        Row(LOAD, "load", n, note="verify + decrypt + decode into numpy arrays"),
        Row(STREAM, "load", n, note="the same, one tensor at a time, each dropped once seen"),
        Row(SEAL_FAST, "seal", n, note="the fast profile (bg planes), written to /dev/shm"),
        Row(STREAM_FAST, "load", n, note="iter_tensors on the fast profile's package"),
        Row(MS_SIGN, "sign", n, note="ECDSA P-256 over the plaintext files"),
        Row(MS_VERIFY, "verify", n),
    ]
    for codec in _codecs(ds, tools):
        what = "ZipNN byte API per dtype run" if codec == "zipnn" else "python zstandard"
        rows.append(Row(codec_label(codec, "compress"), "compress", n, note=what))
        rows.append(Row(codec_label(codec, "decompress"), "decompress", n))
    rows.append(Row(ST_LOAD, "load", n))
    return {r.label: r for r in rows}


def _codecs(ds: DatasetResult, tools: Tools, rnd: int = 1) -> list[str]:
    small = ds.original <= ZSTD19_MAX_BYTES and rnd == 1
    out = [f"zstd-{lvl}" for lvl in ZSTD_LEVELS if lvl < 19 or small]
    return [*out, "zipnn"] if tools.zipnn else out


def _secpack(
    ds: DatasetResult, tools: Tools, keys: Keys, scratch: Path, rows: dict[str, Row], first: bool
) -> None:
    sp, pkg, opened = tools.secpack, scratch / "model.spk", scratch / "opened"
    settle()
    keyopts_seal = cmd("--sign-key", keys.sign, "--recipient", keys.recipient_pub)
    c = run_child(cmd(sp, "seal", ds.path, "-o", pkg, *keyopts_seal, "--json"))
    rows[SEAL].add(c, reported_seconds(c))
    rows[SEAL].out_bytes = pkg.stat().st_size
    settle()
    c = run_child(cmd(sp, "verify", pkg, "--trust", keys.sign_pub, "--json"))
    rows[VERIFY].add(c, reported_seconds(c))
    settle()
    argv = cmd(tools.python, CHILDREN, "secpack-state-dict", pkg, keys.recipient, keys.sign_pub)
    c = run_child(argv)
    info = c.json()
    rows[LOAD].add(c, reported_seconds(c))
    rows[LOAD].rate_bytes = int(str(info.get("decoded_bytes", 0)))
    settle()
    argv = cmd(tools.python, CHILDREN, "secpack-stream", pkg, keys.recipient, keys.sign_pub)
    c = run_child(argv)
    rows[STREAM].add(c, reported_seconds(c))
    rows[STREAM].rate_bytes = int(str(c.json().get("decoded_bytes", 0)))
    if _tmpfs_fits(ds.original):
        shm = TMPFS / f"secpack-bench-{os.getpid()}.spk"
        try:
            for label, extra in ((SEAL_TMPFS, ()), (SEAL_FAST, ("--level", "fast"))):
                settle()
                c = run_child(cmd(sp, "seal", ds.path, "-o", shm, *keyopts_seal, *extra, "--json"))
                rows[label].add(c, reported_seconds(c))
                rows[label].out_bytes = shm.stat().st_size
                if label == SEAL_FAST:
                    settle()
                    argv = cmd(
                        tools.python, CHILDREN, "secpack-stream", shm, keys.recipient, keys.sign_pub
                    )
                    c = run_child(argv)
                    rows[STREAM_FAST].add(c, reported_seconds(c))
                    rows[STREAM_FAST].rate_bytes = int(str(c.json().get("decoded_bytes", 0)))
                shm.unlink()
        finally:
            shm.unlink(missing_ok=True)
    settle()
    keyopts = cmd("--identity", keys.recipient, "--trust", keys.sign_pub)
    c = run_child(cmd(sp, "open", pkg, "-o", opened, *keyopts, "--json"))
    rows[OPEN].add(c, reported_seconds(c))
    if first and not same_tree(ds.path, opened):
        ds.notes.append("**check failed**: secpack open did NOT reproduce the input")
    rm(opened)
    rm(pkg)


def _tmpfs_fits(original: int) -> bool:
    """Room on /dev/shm for a package of the data set, with a wide margin."""
    try:
        st = os.statvfs(TMPFS)
    except OSError:
        return False
    return os.access(TMPFS, os.W_OK) and st.f_bavail * st.f_frsize > 2 * original + (1 << 30)


def _codec(
    ds: DatasetResult, tools: Tools, codec: str, scratch: Path, rows: dict[str, Row]
) -> None:
    blob = scratch / f"{codec}.bin"
    settle()
    c = run_child(cmd(tools.python, PEER_CODECS, "compress", codec, ds.path, blob, str(THREADS)))
    comp = rows[codec_label(codec, "compress")]
    comp.add(c, reported_seconds(c))
    comp.out_bytes = blob.stat().st_size
    settle()
    d = run_child(cmd(tools.python, PEER_CODECS, "decompress", blob, str(THREADS)))
    rows[codec_label(codec, "decompress")].add(d, reported_seconds(d))
    rm(blob)
    if c.json().get("sha256") != d.json().get("sha256"):
        ds.notes.append(f"**check failed**: {codec} did not give back the input byte for byte")


def _load(ds: DatasetResult, tools: Tools, rows: dict[str, Row]) -> Child:
    settle()
    c = run_child(cmd(tools.python, CHILDREN, "safetensors-state-dict", ds.path))
    rows[ST_LOAD].add(c, reported_seconds(c))
    rows[ST_LOAD].rate_bytes = int(str(c.json().get("bytes_in", 0)))
    return c


def bench_peers(
    ds: DatasetResult, tools: Tools, keys: Keys, work: Path, runs: int, log: Callable[[str], None]
) -> None:
    scratch = work / f"{ds.name}-peers"
    rm(scratch)
    scratch.mkdir(parents=True)
    rows = _rows(ds, tools)
    sig = scratch / "model_signing.sig"
    loaded: Child | None = None
    for rnd in range(1, runs + 1):
        log(f"  [{ds.name}] peers round {rnd}/{runs}")
        _secpack(ds, tools, keys, scratch, rows, rnd == 1)
        if tools.model_signing:
            ms = tools.model_signing
            settle()
            argv = cmd(ms, "sign", "key", ds.path, "--private_key", keys.ec, "--signature", sig)
            rows[MS_SIGN].add(run_child(argv))
            settle()
            pub = cmd("--public_key", keys.ec_pub)
            argv = cmd(ms, "verify", "key", ds.path, "--signature", sig, *pub)
            rows[MS_VERIFY].add(run_child(argv))
            rm(sig)
        for codec in _codecs(ds, tools, rnd):
            _codec(ds, tools, codec, scratch, rows)
        loaded = _load(ds, tools, rows)
    rm(scratch)
    st = rows[ST_LOAD]
    skipped = loaded.json().get("skipped") if loaded else None
    if not st.rate_bytes:
        st.walls.clear()  # nothing numpy can load (bf16 without ml_dtypes): no figure
        ds.notes.append(
            "safetensors.numpy.load_file: not measured, numpy has no bfloat16 without ml_dtypes"
        )
    elif isinstance(skipped, list) and skipped:
        st.note = (
            f"fp32 shards only ({st.rate_bytes / MiB:.0f} MiB; {len(skipped)} BF16 shard(s) "
            "skipped: no bfloat16 in numpy); MB/s over the bytes loaded"
        )
    if tools.model_signing is None:
        ds.notes.append("model_signing: not installed, so its rows are missing")
    if ds.original > ZSTD19_MAX_BYTES:
        ds.notes.append(
            f"zstd -19: not run on data sets over {ZSTD19_MAX_BYTES // MiB} MiB "
            "(1-3 MB/s on float weights; see the smaller data sets for its ratio)"
        )
    elif runs > 1:
        ds.notes.append("zstd -19: first round only (1-3 MB/s; one figure, not a median)")
    ds.peers = [r for r in rows.values() if r.walls]

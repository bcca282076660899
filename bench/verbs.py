"""secpack's verbs (seal, verify, open) and its start-up, timed side by side with
the tools users compose today (DESIGN.md §2) on one data set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from anchors import Keys, Tools
from inputs import same_tree
from paths import CHILDREN, rm
from procs import cmd, quote, reported_seconds, run_child, settle, shell
from results import DatasetResult, MiB, Row

__all__ = ["bench_dataset", "bench_startup"]


def bench_dataset(
    ds: DatasetResult, tools: Tools, keys: Keys, work: Path, runs: int, log: Callable[[str], None]
) -> None:
    data, original = ds.path, ds.original
    scratch = work / ds.name
    rm(scratch)
    scratch.mkdir(parents=True)
    sp = tools.secpack
    pkg, opened = scratch / "model.spk", scratch / "opened"
    sig = scratch / "model_signing.sig"

    seal = Row("secpack seal", "seal", original, note="zstd-grouped + AES-256-GCM + Ed25519")
    verify = Row("secpack verify --trust", "verify", original, note="all segment digests")
    open_ = Row("secpack open", "open", original, note="verify + decrypt + decode + write")
    ms_sign = Row("model_signing sign key", "sign", original, note="ECDSA P-256, integrity only")
    ms_verify = Row("model_signing verify key", "verify", original)
    age_stage = " | age -r" if keys.age_recipient else ""
    tz_c = Row(f"tar | zstd -3 -T2{age_stage}", "compress", original)
    tz_d = Row(f"{'age -d | ' if keys.age else ''}zstd -d | tar x", "decompress", original)
    py_z = Row("python zstandard -3 -T2", "compress", original, note="files concatenated")
    st_load = Row("safetensors.numpy.load_file", "load", original)
    floor = Row(
        "tar -cf + sync FILE",
        "write",
        original,
        note="durable-write floor of this disk: the input copied uncompressed, then fsync",
    )
    rows = [seal, verify, open_, ms_sign, ms_verify, tz_c, tz_d, py_z, st_load, floor]

    for rnd in range(1, runs + 1):
        log(f"  [{ds.name}] round {rnd}/{runs}")
        # secpack: seal -> verify -> open, each in its own process.
        settle()
        keyopts = cmd("--sign-key", keys.sign, "--recipient", keys.recipient_pub)
        c = run_child(cmd(sp, "seal", data, "-o", pkg, *keyopts, "--json"))
        seal.add(c, reported_seconds(c))
        seal.out_bytes = pkg.stat().st_size
        settle()
        c = run_child(cmd(sp, "verify", pkg, "--trust", keys.sign_pub, "--json"))
        verify.add(c, reported_seconds(c))
        settle()
        keyopts = cmd("--identity", keys.recipient, "--trust", keys.sign_pub)
        c = run_child(cmd(sp, "open", pkg, "-o", opened, *keyopts, "--json"))
        open_.add(c, reported_seconds(c))
        if rnd == 1:
            if same_tree(data, opened):
                log("    round trip OK: every file came back byte-identical")
            else:
                ds.notes.append("secpack open did NOT reproduce the input byte for byte")
                log("    WARNING: opened tree differs from the input")
        rm(opened)
        rm(pkg)

        # model_signing: sign then verify the plaintext directory.
        if tools.model_signing:
            ms = tools.model_signing
            settle()
            ms_sign.add(
                run_child(
                    cmd(ms, "sign", "key", data, "--private_key", keys.ec, "--signature", sig)
                )
            )
            settle()
            pub = cmd("--public_key", keys.ec_pub)
            ms_verify.add(run_child(cmd(ms, "verify", "key", data, "--signature", sig, *pub)))
            rm(sig)

        # What users compose today: tar | zstd -3 -T2 [| age -r], and back.
        if tools.zstd and tools.tar:
            archive = scratch / ("model.tar.zst" + (".age" if keys.age_recipient else ""))
            encrypt = ""
            if tools.age and keys.age_recipient:
                encrypt = " | " + quote(tools.age, "-r", keys.age_recipient)
            settle()
            tz_c.add(
                run_child(
                    shell(
                        f"{quote(tools.tar, '-C', data, '-cf', '-', '.')} "
                        f"| {quote(tools.zstd, '-3', '-T2', '-q', '-c')}{encrypt} > {quote(archive)}"
                    )
                )
            )
            tz_c.out_bytes = archive.stat().st_size
            untar = scratch / "untarred"
            untar.mkdir()
            if tools.age and keys.age:
                first = f"{quote(tools.age, '-d', '-i', keys.age, archive)} | {quote(tools.zstd, '-d', '-q', '-c')}"
            else:
                first = quote(tools.zstd, "-d", "-q", "-c", archive)
            settle()
            tz_d.add(run_child(shell(f"{first} | {quote(tools.tar, '-C', untar, '-xf', '-')}")))
            rm(untar)
            rm(archive)

        # The disk's durable-write floor: what fsync costs secpack (and nobody else here).
        if tools.tar:
            copy = scratch / "copy.tar"
            settle()
            floor.add(
                run_child(
                    shell(
                        f"{quote(tools.tar, '-C', data, '-cf', copy, '.')} && {quote('sync', copy)}"
                    )
                )
            )
            rm(copy)

        # python zstandard over the concatenated files (no tar headers).
        zout = scratch / "concat.zst"
        settle()
        c = run_child(cmd(tools.python, CHILDREN, "zstd-compress", data, zout, "3", "2"))
        py_z.add(c, reported_seconds(c))
        py_z.out_bytes = zout.stat().st_size
        rm(zout)

        # safetensors load_file (what a plain, unprotected load costs).
        settle()
        c = run_child(cmd(tools.python, CHILDREN, "safetensors-load", data))
        st_load.add(c, reported_seconds(c))
        info = c.json()
        loaded = int(str(info.get("bytes_in", 0)))
        st_load.rate_bytes = loaded
        skipped = info.get("skipped") or []
        if skipped and isinstance(skipped, list):
            st_load.note = (
                f"fp32 shards only ({loaded / MiB:.0f} MiB; {len(skipped)} BF16 shard(s) "
                "skipped: numpy has no bfloat16 without ml_dtypes); MB/s over loaded bytes"
            )

    rm(scratch)
    ds.rows = [r for r in rows if r.walls]
    # Derived: the composed baseline of DESIGN §2, as sums of measured medians.
    if ms_sign.walls and tz_c.walls:
        ds.rows.append(
            Row(
                f"= composed seal: model_signing sign + {tz_c.label}",
                "seal",
                original,
                walls=[ms_sign.wall + tz_c.wall],
                rss_kib=[max(*ms_sign.rss_kib, *tz_c.rss_kib)],
                out_bytes=tz_c.out_bytes,
                derived=True,
                note="sum of medians",
            )
        )
    if ms_verify.walls and tz_d.walls:
        ds.rows.append(
            Row(
                f"= composed open: {tz_d.label} + model_signing verify",
                "open",
                original,
                walls=[ms_verify.wall + tz_d.wall],
                rss_kib=[max(*ms_verify.rss_kib, *tz_d.rss_kib)],
                derived=True,
                note="sum of medians",
            )
        )


def bench_startup(tools: Tools, runs: int) -> list[Row]:
    rows = []
    cmds: list[tuple[str, list[str]]] = [("secpack --version", [tools.secpack, "--version"])]
    if tools.model_signing:
        cmds.append(("model_signing --version", [tools.model_signing, "--version"]))
    for label, argv in cmds:
        row = Row(label, "start-up", 0)
        for _ in range(max(runs, 3)):
            row.add(run_child(argv))
        rows.append(row)
    return rows

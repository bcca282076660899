"""Where the time of a real library load and a real seal goes, by py-spy.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py bench/out/data/minilm-fp32 [--out docs/PROFILE.md]

Seals the model directory (default settings, keys made for the run), then runs
two child processes under ``py-spy record --native --threads``: one loads every
tensor component with ``iter_tensors`` on the default thread pool, over and
over; the other seals the model to a temporary directory, over and over. Each
sample of each thread is put in one bucket, by the innermost frame that names
one (SHA-256, AES-GCM, a codec stage, reading, waiting for the GIL, ...), and the
buckets are printed as shares of the samples.

bench/stages.py times the same stages on one thread from inside; this shows them
as they run on the thread pool, with the time the threads spend waiting.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Samples per second. py-spy pauses the process to unwind native stacks; at 100
# per second that roughly doubles the run time here, at 250 it quadruples it.
# Every thread is paused at once, so the shares stay comparable.
RATE = 100
# Bytes of model loaded (and sealed) per profile unless --reps says otherwise:
# about 1000-2000 samples of each thread at RATE.
WORK_BYTES = 2_000_000_000

# Innermost match wins. Each rule: bucket, pattern on one frame ("name (file)").
_RULES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        ("ans (C)", r"^ans(32)?_(de|en)code|^ans32_(steps|rounds_avx2)"),
        (
            "bgx merge / split (C)",
            r"^(bgx_)?(merge|split)(_range|_pass|_loop|_fp32|_bf16|_fp16)?\b",
        ),
        ("p5 (C)", r"^(un)?pack5"),  # unpack5_avx2 too
        ("histogram / entropy (C)", r"^(histogram|entropy) "),
        ("zstd", r"ZSTD|HUF_|FSE_|zstd"),
        ("SHA-256", r"(?i)sha256|sha2_|_hashlib"),
        ("AES-GCM", r"(?i)aesni|gcm|ghash|aes_|_RNvNt.*aead"),
        ("read / write / fsync", r"^(os_preadv|os_pread|os_write|os_fsync|preadv|pwrite|fsync)"),
        ("memory (map, copy, zero)", r"^(munmap|mmap|madvise|memset|memcpy|memmove|__mem)"),
        ("Python garbage collector", r"^gc_collect"),
        ("start-up (imports)", r"<frozen importlib"),
        ("numpy", r"numpy/"),
        ("Python: secpack", r"secpack/"),
    ]
]
# A thread blocked in these is idle (waiting for work or for a result), not
# waiting for the interpreter lock.
_IDLE = re.compile(r"_queue_SimpleQueue_get|PyThread_acquire_lock|Condition\.wait|Event\.wait")
_WAIT = re.compile(r"^(pthread_cond_(timed)?wait|take_gil)")
_UNNAMED = re.compile(r"^0x[0-9a-f]+ ")


def classify(frames: list[str]) -> str:
    """The bucket of one sample; ``frames`` run from the thread's root inwards."""
    inner = [f for f in reversed(frames) if not _UNNAMED.match(f)]
    for i, frame in enumerate(inner):
        if _WAIT.match(frame) or _IDLE.search(frame):
            # CPython's take_gil is inlined into whatever reacquires the lock, so
            # a condition wait under anything but a queue or a lock is a GIL wait.
            outer = inner[i:]
            if any(_IDLE.search(f) for f in outer[:3]):
                return "idle (waiting for work or a result)"
            return "waiting for the GIL"
        for name, pattern in _RULES:
            if pattern.search(frame):
                return name
    return "other (interpreter, libraries)"


def summarise(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples in all, per bucket, and per thread (py-spy's raw format)."""
    buckets: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        thread = frames[0].split(": ")[-1] if ": " in frames[0] else "unnamed"
        threads[re.sub(r"_\d+$", "", thread)] += n
        buckets[classify(frames[1:])] += n
    return total, buckets, threads


def table(title: str, total: int, buckets: collections.Counter[str], seconds: float) -> str:
    busy = total - buckets["idle (waiting for work or a result)"]
    lines = [
        f"### {title}",
        "",
        f"{total} samples in {seconds:.1f} s of wall time, all threads; {busy} of them not idle.",
        "",
        "| where | share of samples | share of the non-idle ones |",
        "|---|---:|---:|",
    ]
    for name, n in buckets.most_common():
        share_busy = "" if name.startswith("idle") else f"{100 * n / busy:.1f} %"
        lines.append(f"| {name} | {100 * n / total:.1f} % | {share_busy} |")
    return "\n".join(lines)


def child(args: list[str]) -> None:
    """The profiled work: ``load PKG IDENTITY TRUST REPS`` or ``seal MODEL DIR KEY
    RECIPIENT REPS``. Imports and one warm-up run come first; then the child says
    ``ready`` and waits for a line on stdin, so that the profiler, attached in
    between, sees only the repeated work."""
    sys.path.insert(0, str(ROOT))
    import secpack

    verb, *rest = args
    reps = int(rest[-1])
    if verb == "load":
        pkg, identity, trust = rest[:3]
        package = secpack.open_package(pkg, identity=identity, trust=[trust])
        names = [c.name for c in package.components if c.kind in ("weights", "adapter")]

        def once() -> None:
            for name in names:
                for _tensor, _array in package.iter_tensors(name):
                    pass

    else:
        from secpack.api.keyfiles import load_recipient, load_signing_key
        from secpack.api.seal import seal

        model, folder, key, recipient = rest[:4]
        signer, public = load_signing_key(key), load_recipient(recipient)
        out = Path(folder) / "profiled.spk"

        def once() -> None:
            seal(model, str(out), sign_keys=[signer], recipients=[(None, public)], overwrite=True)

    once()
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(reps):
        once()


def record(py_spy: str, out: Path, argv: list[str]) -> float:
    """Profile one child from its ``ready`` to its exit; returns that wall time."""
    command = [sys.executable, __file__, "--child", *argv]
    work = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert work.stdin is not None and work.stdout is not None
    if work.stdout.readline().strip() != "ready":
        work.kill()
        sys.exit(f"the profiled child failed: {' '.join(command)}")
    spy = [py_spy, "record", "--native", "--threads", "--rate", str(RATE), "--format", "raw"]
    spy += ["--output", str(out), "--pid", str(work.pid)]
    profiler = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    started = time.perf_counter()
    work.stdin.write("go\n")
    work.stdin.close()
    if work.wait() != 0:
        sys.exit(f"the profiled child failed: {' '.join(command)}")
    wall = time.perf_counter() - started
    profiler.wait()
    return wall


def profile_model(py_spy: str, model: Path, count: int) -> list[str]:
    """The load and seal profiles of one model directory, as markdown sections."""
    sections: list[str] = []
    secpack_cli = str(Path(sys.executable).parent / "secpack")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        folder = Path(tmp)
        for kind, name in (("signing", "sign"), ("recipient", "id")):
            subprocess.run(
                [secpack_cli, "keygen", kind, "-o", str(folder / name)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        pkg = folder / "model.spk"
        seal_cmd = [secpack_cli, "seal", str(model), "-o", str(pkg)]
        seal_cmd += ["--sign-key", str(folder / "sign"), "--recipient", str(folder / "id.pub")]
        subprocess.run(seal_cmd, check=True, stdout=subprocess.DEVNULL)
        reps = str(count)
        work = {
            "library load: open_package + iter_tensors, default threads": [
                "load",
                str(pkg),
                str(folder / "id"),
                str(folder / "sign.pub"),
                reps,
            ],
            "seal (library call, output on tmpfs), default threads": [
                "seal",
                str(model),
                tmp,
                str(folder / "sign"),
                str(folder / "id.pub"),
                reps,
            ],
        }
        for title, argv in work.items():
            raw = folder / "profile.txt"
            wall = record(py_spy, raw, argv)
            total, buckets, threads = summarise(raw)
            sections.append(table(f"{title}, {count} times", total, buckets, wall))
            per_thread = ", ".join(f"{t}: {n}" for t, n in threads.most_common())
            sections.append(f"\nSamples per thread: {per_thread}.")
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, nargs="*", help="model directories")
    parser.add_argument(
        "--reps", type=int, help="loads and seals per profile (default: about 2 GB of work)"
    )
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if not args.model:
        parser.error("a model directory is needed")
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    sections = []
    for model in args.model:
        sections.append(f"## {model.name}")
        size = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
        reps = args.reps or max(2, round(WORK_BYTES / max(size, 1)))
        sections += profile_model(py_spy, model, reps)
    text = "\n\n".join(sections)
    print(text)
    if args.out:
        head = (
            "# Profiles of load and seal\n\n<!-- Generated by bench/profile.py. Edit the script, not this file. -->\n\n"
            f"`.venv/bin/python bench/profile.py {' '.join(map(str, args.model))}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} CPUs. py-spy {_version(py_spy)}, {RATE} samples per second per thread, "
            "native frames included.\n\n"
            "Each sample is counted where its innermost recognised frame is (bench/profile.py, "
            "`_RULES`). *Idle* threads are blocked on the work queue or on a result; "
            "*waiting for the GIL* are threads that are ready to run Python but do not hold "
            "the interpreter lock (CPython's `take_gil`, seen as a condition wait under the "
            "function that reacquires it).\n\n"
        )
        args.out.write_text(head + text + "\n")


def _version(py_spy: str) -> str:
    done = subprocess.run([py_spy, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().removeprefix("py-spy ")


if __name__ == "__main__":
    main()

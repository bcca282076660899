"""The machine and the library versions a run measured on."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from paths import shown
from source import SourceState

__all__ = ["load_average", "machine_info"]


def load_average() -> str:
    """The 1-minute load average, as /proc/loadavg gives it ("?" where it cannot)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


def machine_info(source: SourceState) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    # ml_dtypes decides whether secpack's loader returns BF16 as bfloat16 or uint16.
    mods = ("cryptography", "zstandard", "numpy", "safetensors", "cbor2", "ml_dtypes")
    for mod in (*mods, "zipnn", "torch", "matplotlib"):
        try:
            versions.append(f"{mod} {version(mod)}")
        except PackageNotFoundError:
            versions.append(f"{mod} not installed")
    return [
        f"- secpack source: {source.describe()}; measured from a copy of secpack/ taken at "
        "the start of the run, first on the children's PYTHONPATH",
        f"- CPU: {cpu}; `nproc` = {os.cpu_count()}; memory {mem}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()} ({shown(sys.executable)})",
        f"- {', '.join(versions)}",
    ]

"""The peer comparison as one PNG: size ratio per data set (zstd -3, ZipNN,
secpack, with the targets) and in-process MB/s (ZipNN against secpack)."""

from __future__ import annotations

from pathlib import Path

from peers import LOAD, SEAL, SEAL_TMPFS, STREAM, codec_label
from report_peers import SIZE_TARGETS
from results import DatasetResult

__all__ = ["draw"]

_SIZE = (
    (codec_label("zstd-3", "compress"), "zstd -3"),
    (codec_label("zipnn", "compress"), "ZipNN"),
    (SEAL, "secpack package"),
)
_SPEED = (
    (codec_label("zipnn", "compress"), "ZipNN compress"),
    (SEAL, "secpack seal"),
    (SEAL_TMPFS, "secpack seal, tmpfs"),
    (codec_label("zipnn", "decompress"), "ZipNN decompress"),
    (LOAD, "secpack load, state_dict"),
    (STREAM, "secpack load, iter_tensors"),
)
# zstd grey, ZipNN orange, secpack blue; decompression / load in the lighter shade.
_SIZE_COLORS = ("#9e9e9e", "#e69f00", "#0072b2")
_SPEED_COLORS = ("#e69f00", "#0072b2", "#3b8fc4", "#f5c96a", "#7fc4ec", "#a9d8f2")


def draw(results: list[DatasetResult], path: Path, title: str) -> bool:
    """Write the chart to ``path``; False (and no file) without matplotlib or data."""
    done = [ds for ds in results if ds.peers]
    if not done:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [ds.name for ds in done]
    xs = list(range(len(done)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.4), constrained_layout=True)
    width = 0.8 / len(_SIZE)
    for i, (label, legend) in enumerate(_SIZE):
        vals = [r.ratio if (r := ds.peer(label)) and r.ratio is not None else 0.0 for ds in done]
        bars = ax1.bar([x + (i - 1) * width for x in xs], vals, width, label=legend)
        for bar in bars:
            bar.set_color(_SIZE_COLORS[i])
        ax1.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    for x, ds in zip(xs, done, strict=True):
        target = SIZE_TARGETS.get(ds.name)
        if target is not None:
            ax1.hlines(target, x - 0.45, x + 0.45, colors="red", linestyles="--", linewidth=1)
    ax1.plot([], [], "r--", linewidth=1, label="target")
    ax1.set_ylim(0.5, 1.0)
    ax1.set_ylabel("output / original (lower is better)")
    ax1.set_title("size ratio")
    width = 0.8 / len(_SPEED)
    for i, (label, legend) in enumerate(_SPEED):
        vals = [
            r.inproc_mbps if (r := ds.peer(label)) and r.inproc_mbps is not None else 0.0
            for ds in done
        ]
        offset = i - (len(_SPEED) - 1) / 2
        bars = ax2.bar([x + offset * width for x in xs], vals, width, label=legend)
        for bar in bars:
            bar.set_color(_SPEED_COLORS[i])
        ax2.bar_label(bars, fmt="%.0f", fontsize=7, rotation=90, padding=2)
    ax2.set_ylabel("MB/s, in-process (higher is better)")
    ax2.set_title("speed, 2 threads")
    ax2.margins(y=0.15)
    for ax in (ax1, ax2):
        ax.set_xticks(xs, names, rotation=15, fontsize=8)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

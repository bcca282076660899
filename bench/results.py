"""What the benchmark measured: one row per tool and operation, the data sets,
and the runtime loader's series. Plain data, no I/O."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from procs import Child

__all__ = ["MB", "DatasetResult", "GiB", "LoaderResult", "MiB", "Row", "Series"]

MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30


@dataclass
class Row:
    label: str  # what ran, as shown in the table
    op: str  # seal / verify / open / load / start-up
    original: int  # bytes of the model the figure is about
    walls: list[float] = field(default_factory=list)
    inproc: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    out_bytes: int | None = None
    rate_bytes: int | None = None  # bytes the MB/s figure is over, when not ``original``
    derived: bool = False  # a sum of other rows' medians, not a measured process
    note: str = ""

    def add(self, child: Child, inproc: float | None = None) -> None:
        self.walls.append(child.wall)
        self.rss_kib.append(child.rss_kib)
        if inproc is not None:
            self.inproc.append(inproc)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def mbps(self) -> float:
        return (self.rate_bytes or self.original) / self.wall / MB

    @property
    def inproc_mbps(self) -> float | None:
        """MB/s over the tool's own (in-process) time, where it reported one."""
        if not self.inproc:
            return None
        return (self.rate_bytes or self.original) / statistics.median(self.inproc) / MB

    @property
    def ratio(self) -> float | None:
        return None if self.out_bytes is None else self.out_bytes / self.original

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "op": self.op,
            "original_bytes": self.original,
            "walls": self.walls,
            "inproc": self.inproc,
            "rss_kib": self.rss_kib,
            "out_bytes": self.out_bytes,
            "rate_bytes": self.rate_bytes,
            "derived": self.derived,
            "median_wall": self.wall if self.walls else None,
            "mb_per_s": self.mbps if self.walls else None,
            "note": self.note,
        }


@dataclass
class DatasetResult:
    name: str
    path: Path
    original: int
    files: int
    description: str
    has_bf16: bool = False
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loader: LoaderResult | None = None
    peers: list[Row] = field(default_factory=list)  # the peer comparison (bench/peers.py)

    def find(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label and r.walls), None)

    def peer(self, label: str) -> Row | None:
        return next((r for r in self.peers if r.label == label and r.walls), None)


@dataclass
class Series:
    """Repeated runs of one loader workload, each a process of its own: the numbers
    the child reported (``seconds``, ``open_s``, ``bytes_read`` ...) plus its
    ``wall`` and ``rss_kib`` as measured from outside."""

    label: str
    samples: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)  # the last run's full report

    def add(self, child: Child) -> dict[str, object]:
        info = child.json()
        sample = {
            k: float(v)
            for k, v in info.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        sample["wall"] = child.wall
        sample["rss_kib"] = float(child.rss_kib)
        self.samples.append(sample)
        self.info = info
        return info

    def values(self, key: str) -> list[float]:
        return [s[key] for s in self.samples if key in s]

    def median(self, key: str) -> float:
        return statistics.median(self.values(key))

    def has(self, key: str) -> bool:
        return bool(self.values(key))

    def peak(self, key: str) -> float:
        return max(self.values(key))

    def low(self, key: str) -> float:
        return min(self.values(key))

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "samples": self.samples}


@dataclass
class LoaderResult:
    """The runtime loader (``secpack.open_package``) on one data set's package."""

    package_bytes: int  # the sealed package (default settings: signed + encrypted)
    decoded_bytes: int  # every tensor of every tensor component, as decoded
    tensors: int
    pick: dict[str, object]  # the one tensor: name, dtype, shape, length
    full: Series  # open_package + state_dict of every tensor component
    one: Series  # open_package + tensor(pick) in a fresh process
    safetensors: Series  # safetensors.numpy.load_file of every shard numpy can read
    fp32: Series | None = None  # secpack on a package of just those shards, when it differs
    fp32_package_bytes: int | None = None
    fp32_decoded_bytes: int | None = None
    skipped_shards: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "package_bytes": self.package_bytes,
            "decoded_bytes": self.decoded_bytes,
            "tensors": self.tensors,
            "pick": self.pick,
            "fp32_package_bytes": self.fp32_package_bytes,
            "fp32_decoded_bytes": self.fp32_decoded_bytes,
            "skipped_shards": self.skipped_shards,
            "series": [
                s.as_dict()
                for s in (self.full, self.one, self.safetensors, self.fp32)
                if s is not None
            ],
            "notes": self.notes,
        }

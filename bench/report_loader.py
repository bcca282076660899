"""The report's "Runtime loader" section: secpack's loader against safetensors."""

from __future__ import annotations

from fmt import fmt_rss, met, mib
from loader import ONE_TENSOR_RUNS
from results import DatasetResult, LoaderResult, MiB, Series

__all__ = ["loader_findings", "loader_section", "loader_table"]


# The loader's targets: one tensor reads under this share of the package and takes
# under this share of the full load's time; a full load's peak RSS stays within this
# much of the decoded tensors.
ONE_TENSOR_READ_TARGET = 0.02
ONE_TENSOR_TIME_TARGET = 0.05
RSS_EXCESS_TARGET_MIB = 128
# The one-tensor targets are set for a ~1 GiB model; on a smaller one they are shown for
# reference, since one 4 MiB tensor is then a large share of the whole.
TARGET_MODEL_BYTES = 512 * MiB


def _shape(pick: dict[str, object]) -> str:
    shape = pick.get("shape")
    return " x ".join(str(d) for d in shape) if isinstance(shape, list) else "?"


def _secs(series: Series, key: str) -> str:
    if not series.has(key):
        return ""
    med = series.median(key)
    if len(series.samples) < 2:
        return f"{med:.3f}"
    return f"{med:.3f} ({series.low(key):.3f}-{series.peak(key):.3f})"


def _loader_row(label: str, series: Series, package_bytes: int | None) -> str:
    decoded = series.median("decoded_bytes")
    load = series.median("load_s")
    read = ""
    if package_bytes and series.has("bytes_read"):
        got = series.median("bytes_read")
        read = f"{mib(got)} ({got / package_bytes:.2%})"
    rss = series.peak("rss_kib") * 1024
    return (
        f"| {label} | {_secs(series, 'wall')} | {series.median('import_s'):.3f} "
        f"| {_secs(series, 'open_s')} | {_secs(series, 'load_s')} | {decoded / MiB:.1f} "
        f"| {decoded / load / 1e6:.0f} | {read} | {fmt_rss(int(series.peak('rss_kib')))} "
        f"| {(rss - decoded) / MiB:+.0f} MiB |"
    )


def loader_table(res: LoaderResult) -> list[str]:
    pick = res.pick
    lines = [
        "| workload | wall s | import s | open s | load s | decoded MiB | load MB/s "
        "| read from package | peak RSS | peak RSS - decoded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        _loader_row("secpack `state_dict`, every tensor", res.full, res.package_bytes),
    ]
    if res.fp32 is not None:
        lines.append(
            _loader_row(
                "secpack `state_dict`, package of the numpy-loadable shards only",
                res.fp32,
                res.fp32_package_bytes,
            )
        )
    st_label = "`safetensors.numpy.load_file`, " + (
        "numpy-loadable shards" if res.skipped_shards else "every shard"
    )
    lines.append(_loader_row(st_label, res.safetensors, None))
    lines.append(
        _loader_row(
            f"secpack `tensor()`, one {mib(int(str(pick['length'])))} {pick['dtype']} tensor",
            res.one,
            res.package_bytes,
        )
    )
    return lines


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.2%}"


def loader_findings(res: LoaderResult) -> list[str]:
    full, one, st = res.full, res.one, res.safetensors
    pick = res.pick
    out: list[str] = []
    like = res.fp32 if res.fp32 is not None else full
    st_s = st.median("seconds")
    like_s = like.median("open_s") + like.median("load_s")
    what = (
        f"the {'numpy-loadable ' if res.skipped_shards else ''}shards, "
        f"{mib(st.median('bytes_in'))} of tensors"
    )
    out.append(
        f"- like with like ({what}): secpack `open_package` + `state_dict` {like_s:.2f} s vs "
        f"`safetensors.numpy.load_file` {st_s:.2f} s in-process: **secpack / safetensors = "
        f"{like_s / st_s:.2f}x** (whole process, start-up and imports included: "
        f"{like.median('wall'):.2f} s vs {st.median('wall'):.2f} s, "
        f"{like.median('wall') / st.median('wall'):.2f}x)"
        + (
            f". secpack's package here holds just those shards "
            f"({mib(res.fp32_package_bytes or 0)}): safetensors.numpy cannot load "
            f"{', '.join(res.skipped_shards)} (bf16) without ml_dtypes"
            if res.fp32 is not None
            else ""
        )
    )
    full_s = full.median("open_s") + full.median("load_s")
    out.append(
        f"- full load: `open_package` + `state_dict` of all {res.tensors} tensors "
        f"({mib(res.decoded_bytes)} decoded) from the {mib(res.package_bytes)} package: "
        f"{full_s:.2f} s in-process ({res.decoded_bytes / full_s / 1e6:.0f} MB/s), "
        f"{full.median('wall'):.2f} s for the whole process"
    )
    after_open = one.median("bytes_read_open")
    after = one.median("bytes_read")
    length = int(str(pick["length"]))
    read_ok = after / res.package_bytes < ONE_TENSOR_READ_TARGET
    t_one, t_full = one.median("load_s"), full.median("load_s")
    with_open = (one.median("open_s") + t_one) / full_s
    small = (
        f"; for reference only: the targets are set for a ~1 GiB model, and this tensor is "
        f"{_share(length, res.decoded_bytes)} of this model's tensor bytes"
        if res.decoded_bytes < TARGET_MODEL_BYTES
        else ""
    )
    out.append(
        f"- one tensor, `{pick['name']}` ({pick['dtype']}, shape {_shape(pick)}, "
        f"{mib(length)}), {len(one.samples)} fresh processes: `open_package` "
        f"{one.median('open_s') * 1e3:.0f} ms, then `tensor()` {t_one * 1e3:.1f} ms "
        f"(whole process {one.median('wall'):.2f} s, of which imports "
        f"{one.median('import_s'):.2f} s)"
    )
    out.append(
        f"- one tensor, bytes read: {after_open / 1024:.0f} KiB after `open_package` "
        f"({_share(after_open, res.package_bytes)} of the package), {mib(after)} after "
        f"`tensor()` ({_share(after, res.package_bytes)}); target < "
        f"{ONE_TENSOR_READ_TARGET:.0%}: {met(read_ok)}"
        + (
            f" (this tensor alone is {_share(length, res.package_bytes)} of the package)"
            if length / res.package_bytes >= ONE_TENSOR_READ_TARGET
            else ""
        )
        + small
    )
    out.append(
        f"- one tensor vs the full load: `tensor()` / `state_dict()` = "
        f"{_share(t_one, t_full)}; with `open_package` on both sides {with_open:.2%}; "
        f"target < {ONE_TENSOR_TIME_TARGET:.0%}: "
        f"{met(t_one / t_full < ONE_TENSOR_TIME_TARGET)}" + small
    )
    peak = full.peak("rss_kib") * 1024
    excess = (peak - res.decoded_bytes) / MiB
    st_peak = st.peak("rss_kib") * 1024
    out.append(
        f"- peak RSS of the full load: {mib(peak)} for {mib(res.decoded_bytes)} of decoded "
        f"tensors, **{excess:+.0f} MiB** over (highest of {len(full.samples)} runs); target "
        f"≤ {RSS_EXCESS_TARGET_MIB} MiB over: {met(excess <= RSS_EXCESS_TARGET_MIB)}. "
        f"For scale: the one-tensor process peaks at {mib(one.peak('rss_kib') * 1024)} "
        f"(interpreter, imports, one tensor); safetensors' load peaks at {mib(st_peak)} "
        f"for {mib(st.median('bytes_in'))} ({(st_peak - st.median('bytes_in')) / MiB:+.0f} "
        "MiB)"
    )
    out += [f"- note: {n}" for n in res.notes]
    return out


def loader_section(results: list[DatasetResult], runs: int) -> list[str]:
    done = [(ds, ds.loader) for ds in results if ds.loader is not None]
    if not done:
        return []
    lines = [
        "## Runtime loader",
        "",
        "`secpack.open_package(PKG, identity=x25519.key, trust=[ed25519.pub])`, then "
        "`Package.state_dict(c)` for every tensor component or `Package.tensor(name)` "
        "(secpack/api/loader.py), side by side with `safetensors.numpy.load_file`. The package "
        "is sealed once per data set with the default settings (signed, encrypted to one "
        "recipient); the page cache is warm.",
        "",
        "- Each figure is one process of its own (`bench/children.py`), so *wall s* includes "
        "interpreter start-up and *peak RSS* is that process's own (GNU time `%M`, highest "
        "over the runs). Inside the process: *import s* = `import numpy, secpack.api.loader` "
        "(`import safetensors.numpy`); *open s* = `open_package` (signatures, trust, "
        "freshness, rollback); *load s* = `state_dict` / `tensor()` / `load_file` on every "
        "shard. All arrays stay in memory until the end, as a state dict does.",
        f"- Medians (min-max) of {runs} run(s); the one-tensor figures are medians of "
        f"{runs * ONE_TENSOR_RUNS} fresh processes ({ONE_TENSOR_RUNS} per round). *read from "
        "package* = `Package.bytes_read` at the end (header included) and its share of the "
        "package file. *load MB/s* = decoded bytes / load s. *peak RSS - decoded* = peak "
        "RSS minus the tensors' decoded bytes.",
        "- Without ml_dtypes (not installed here) numpy has no bfloat16: secpack returns bf16 "
        "tensors as uint16 bit patterns and `safetensors.numpy` refuses them. Like with like, "
        "secpack's time is compared on a package sealed from the shards numpy can load.",
        "",
    ]
    for ds, res in done:
        lines += [
            f"### {ds.name}",
            "",
            f"{res.tensors} tensors, {mib(res.decoded_bytes)} decoded; package "
            f"{mib(res.package_bytes)}.",
            "",
            *loader_table(res),
            "",
            *loader_findings(res),
            "",
        ]
    return lines

"""Rendering of ``secpack inspect``."""

from typing import Any

from secpack.api.inspect import InspectReport
from secpack.cli.render import human_ratio, human_size, human_time, out

__all__ = ["render_inspect"]


def _kid(kid: bytes | None) -> str | None:
    return None if kid is None else "sha256:" + kid.hex()


def render_inspect(report: InspectReport, as_json: bool, quiet: bool) -> None:
    m = report.manifest
    comps: list[dict[str, Any]] = []
    lines = [
        f"{m.name} v{m.version}  ({report.path})",
        f"  created {human_time(m.created)}, expires {human_time(m.expires)}",
        f"  size {human_size(m.plain_size)} -> {human_size(report.package_size)}"
        f"  ratio {human_ratio(report.package_size, m.plain_size)}",
        f"  manifest sha256:{report.manifest_digest.hex()}",
        f"  signatures: {len(report.signatures) or 'none (unsigned)'}"
        + ("  [verified against policy]" if report.verified else ""),
    ]
    for s in report.signatures:
        trust = {None: "", True: "  trusted", False: "  not trusted"}[s.trusted]
        lines.append(f"    {s.type} {s.alg or '?'} {_kid(s.key_id) or ''}{trust}")
    lines.append("  components:")
    # Names are at most 64 + 1 + 64 characters: the column fits the longest here.
    width = max([20, *(len(c.name) for c in m.components)])
    for c in m.components:
        enc = "encrypted" if c.encryption else "plain"
        recipients = len(c.encryption.recipients) if c.encryption else 0
        lines.append(
            f"    {c.name:<{width}} {c.kind:<9} {human_size(c.size):>10}"
            f" -> {human_size(c.stored_size):>10}"
            f"  {human_ratio(c.stored_size, c.size):<18} {enc}"
            + (f", {recipients} recipient(s)" if recipients else "")
        )
        entry: dict[str, Any] = {
            "name": c.name,
            "kind": c.kind,
            "media_type": c.media_type,
            "size": c.size,
            "stored_size": c.stored_size,
            "segments": len(c.segments),
            "encrypted": c.encryption is not None,
            "recipients": [_kid(r.kid) for r in c.encryption.recipients] if c.encryption else [],
        }
        contents = report.contents.get(c.name)
        if contents is not None:
            entry["files"] = [
                {"path": f.path, "size": f.size, "mode": f.mode} for f in contents.files
            ]
            entry["tensors"] = [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.length}
                for t in contents.tensors
            ]
            for f in contents.files:
                lines.append(f"      file {f.path} ({human_size(f.size)})")
            for t in contents.tensors:
                lines.append(f"      tensor {t.name} {t.dtype} {list(t.shape)}")
        elif c.name in report.unreadable:
            lines.append("      (contents need an identity that is a recipient)")
        comps.append(entry)
    out(
        {
            "package": report.path,
            "name": m.name,
            "version": m.version,
            "created": m.created,
            "expires": m.expires,
            "metadata": dict(m.metadata),
            "original_bytes": m.plain_size,
            "package_bytes": report.package_size,
            "ratio": report.package_size / m.plain_size if m.plain_size else None,
            "manifest_digest": "sha256:" + report.manifest_digest.hex(),
            "verified": report.verified,
            "signatures": [
                {"type": s.type, "key_id": _kid(s.key_id), "alg": s.alg, "trusted": s.trusted}
                for s in report.signatures
            ],
            "components": comps,
        },
        as_json,
        lines,
        quiet,
    )

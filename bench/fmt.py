"""How the report writes one number: sizes, peak RSS, speed-ups, met / not met."""

from __future__ import annotations

from results import MiB

__all__ = ["fmt_rss", "met", "mib", "plain", "vs"]


def fmt_rss(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def vs(ours: float, theirs: float) -> str:
    """'2.3x faster' / '1.4x slower' for wall times ``ours`` against ``theirs``."""
    if ours <= theirs:
        return f"**{theirs / ours:.2f}x faster**"
    return f"**{ours / theirs:.2f}x slower**"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def plain(line: str) -> str:
    """A markdown bullet as a plain terminal line."""
    return line.replace("**", "").replace("`", "").removeprefix("- ")

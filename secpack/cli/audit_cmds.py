"""``secpack audit show|verify|export``."""

import json
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

import typer

from secpack.cli import JsonOpt, QuietOpt, _run, app

__all__: list[str] = []

audit_app = typer.Typer(
    help="Read and check the tamper-evident audit log.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(audit_app, name="audit")

LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log", metavar="PATH", help="Audit log (default $SECPACK_AUDIT_LOG or the state dir)."
    ),
]


def _given(path: str | None) -> None:
    """A log named with --log must be there: "0 records, chain intact" for a
    misspelt path, or a deleted log, would read as a clean bill. (The default log
    is absent until the first verb writes it.)"""
    import os

    from secpack.errors import InputError

    # exists(), not lexists(): a dangling link is no log either. An empty --log
    # names the default log, as it always has.
    if path and not os.path.exists(path):
        raise InputError("input.missing", f"{path} does not exist")


def _records(path: str | None) -> Iterator[dict[str, Any]]:
    """The log's records, checked whole before the first is given (a log of
    millions of records is never held in memory: one verb's log grows for years)."""
    from secpack.audit.log import read_records

    _given(path)
    return read_records(path)


def _write_chunked(pieces: Iterable[str]) -> None:
    """Write ``pieces`` in chunks of about 1 MiB: one write per record is slow, and
    one write of them all holds the whole output."""
    from secpack.cli.render import write_out

    chunk: list[str] = []
    size = 0
    for piece in pieces:
        chunk.append(piece)
        size += len(piece)
        if size >= 1 << 20:
            write_out("".join(chunk))
            chunk, size = [], 0
    if chunk:
        write_out("".join(chunk))


def _json_document(records: Iterator[dict[str, Any]], sort_keys: bool) -> Iterator[str]:
    """``json.dumps({"ok": True, "records": [...]})``, byte for byte, a record at a time."""
    yield '{"ok": true, "records": ['
    for i, record in enumerate(records):
        yield (", " if i else "") + json.dumps(record, sort_keys=sort_keys)
    yield "]}\n"


@audit_app.command("show", epilog="Example: secpack audit show --json")
def show(log: LogOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Print the records, oldest first."""

    def action() -> None:
        from secpack.cli.render import printable

        records = _records(log)
        if as_json:
            _write_chunked(_json_document(records, sort_keys=True))
        elif quiet:
            for _ in records:  # checked all the same: a corrupt log is still an error
                pass
        else:
            _write_chunked(printable(_line(r)) + "\n" for r in records)

    _run(as_json, action)


def _line(r: dict[str, Any]) -> str:
    # Records of any shape are shown as they are (a hand-edited or foreign line is
    # for `audit verify` to judge), never a crash on a field's type.
    pkg = r.get("package")
    pkg = pkg if isinstance(pkg, dict) else {}
    actor = r.get("actor")
    who = str(actor.get("user", "?")) if isinstance(actor, dict) else "?"
    what = f"{pkg.get('name', pkg.get('path', '-'))} v{pkg.get('version', '?')}"
    result = r.get("outcome") if r.get("outcome") == "ok" else f"error[{r.get('code')}]"
    seq, action_ = str(r.get("seq")), str(r.get("action"))
    return f"{seq:>6} {r.get('time')} {who:<10} {action_:<7} {what}  {result}"


@audit_app.command("verify", epilog="Example: secpack audit verify --key audit.pub")
def verify(
    log: LogOpt = None,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", metavar="PUB", help="Require every record signed by one of these."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check the hash chain: detects edited, deleted, inserted, reordered and truncated records."""

    def action() -> None:
        from cryptography.hazmat.primitives.asymmetric import x25519

        from secpack.audit.log import check_log, default_log_path
        from secpack.cli.render import out
        from secpack.errors import SecpackError
        from secpack.recipes.keys import key_id, load_public_pem
        from secpack.transport.files import read_small

        keys = None
        if key:
            keys = {}
            for path in key:
                pub = load_public_pem(read_small(path, "audit key"), path)
                if isinstance(pub, x25519.X25519PublicKey):
                    raise SecpackError(
                        "key.invalid", f"{path}: an X25519 key encrypts; it cannot sign records"
                    )
                keys[key_id(pub).hex()] = pub
        _given(log)
        problem, count = check_log(log, keys)  # the records it checked, no more
        if problem is not None:
            raise SecpackError("audit.tampered", f"line {problem.line}: {problem.reason}")
        path = log or default_log_path()
        out(
            {"log": path, "records": count},
            as_json,
            [f"OK {path}: {count} record(s), chain intact"],
            quiet,
        )

    _run(as_json, action)


@audit_app.command("export", epilog="Example: secpack audit export --json > audit.json")
def export(
    log: LogOpt = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json/--jsonl",
            help="One JSON document (the default), or JSON Lines: one record per line.",
        ),
    ] = True,
) -> None:
    """Write the records as one JSON document, or as JSON Lines (--jsonl)."""

    def action() -> None:
        records = _records(log)
        if as_json:
            _write_chunked(_json_document(records, sort_keys=False))
        else:
            _write_chunked(json.dumps(r, sort_keys=True) + "\n" for r in records)

    _run(as_json, action)

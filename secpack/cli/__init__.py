"""The ``secpack`` command line. Heavy modules are imported inside each verb so
that ``secpack --help`` and small verifications start fast.

The modules of this package do not use ``from __future__ import annotations``:
typer reads every parameter's annotation of every command at each start, and as
strings they were compiled and evaluated each time, 30 ms of every command.
"""

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from typer._click.core import Context
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from secpack.errors import SecpackError, StdoutError, resource_limit

__all__ = ["app", "main"]

# The exit status of each code that does not exit 1 (README, docs/FORMAT.md §12).
# input.invalid is a command that cannot be carried out as given, whether click
# finds it (a missing or unknown option, `--threads abc`) or secpack does
# (`--threads -1`, `--level foo`): the same code, so the same status. internal is
# EX_SOFTWARE of sysexits.h, and stdout.io (the work was done but its report was
# lost) EX_IOERR: apart from 1, so that a script can tell a lost report from a
# refused operation, and need not redo the work.
EXIT_STATUS = {"input.invalid": 2, "internal": 70, "stdout.io": 74, "interrupted": 130}


def exit_status(code: str) -> int:
    return EXIT_STATUS.get(code, 1)


# Whether the command line asks for --json, in Context.meta (shared by the
# contexts of the verb and of the groups above it).
_AS_JSON = "secpack.json"


class _UsageFailure(UsageError):
    """A usage error reported as every other error: ``error[input.invalid]`` on
    stderr and, with --json, the error object on stdout; then click's usage line
    and hint, for people."""

    exit_code = EXIT_STATUS["input.invalid"]

    def __init__(self, cause: UsageError, as_json: bool) -> None:
        super().__init__(cause.format_message(), cause.ctx)
        self.as_json = as_json

    def show(self, file: object = None) -> None:
        from secpack.cli.render import fail, write_err

        fail(SecpackError("input.invalid", self.message), self.as_json)
        ctx = self.ctx
        if ctx is not None:
            hint = ""
            if ctx.command.get_help_option(ctx) is not None:
                hint = f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.\n"
            write_err(f"{ctx.get_usage()}\n{hint}")


def _usage_failure(exc: UsageError, as_json: bool) -> UsageError:
    # No arguments at all asks for the help text (exit 2), as click shows it.
    if isinstance(exc, NoArgsIsHelpError | _UsageFailure):
        return exc
    return _UsageFailure(exc, as_json)


class _Group(TyperGroup):
    """The root command: its parsing and its verbs' parsing (a missing or unknown
    option or argument, a value of the wrong type) fail through _UsageFailure."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Context | None = None,
        **extra: Any,
    ) -> Context:
        # Before parsing, which may fail: a flag that the parse never reaches still
        # asks for JSON (the same test as secpack.entry's for an interrupt).
        as_json = "--json" in args
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except UsageError as exc:
            raise _usage_failure(exc, as_json) from None
        ctx.meta[_AS_JSON] = as_json
        return ctx

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise _usage_failure(exc, bool(ctx.meta.get(_AS_JSON))) from None


app = typer.Typer(
    name="secpack",
    cls=_Group,
    help="Seal ML models into signed, encrypted, compressed packages, and open them safely.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help output: rich-formatted help costs ~0.2 s of imports at every start.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
keygen_app = typer.Typer(
    help="Create a key pair: PATH (private, 0600) and PATH.pub, both PEM.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(keygen_app, name="keygen")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")]
TrustOpt = Annotated[
    list[str] | None,
    typer.Option("--trust", metavar="PUB", help="Trusted signer public key (repeatable)."),
]
PolicyOpt = Annotated[
    str | None,
    typer.Option("--policy", metavar="FILE", help="Trust policy (TOML); default $SECPACK_POLICY."),
]
PassEnvOpt = Annotated[
    str | None,
    typer.Option("--passphrase-env", metavar="VAR", help="Read the key passphrase from $VAR."),
]
TrustedRootOpt = Annotated[
    str | None,
    typer.Option(
        "--trusted-root",
        metavar="FILE",
        help="Pinned sigstore trusted root for keyless signers (replaces the policy's).",
    ),
]
DowngradeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-downgrade",
        help="Accept a version older than one already seen from the same signer (logged).",
    ),
]
ThreadsOpt = Annotated[
    int,
    typer.Option(
        "--threads", metavar="N", help="Worker threads (0: one per usable CPU, as memory allows)."
    ),
]


# Set once a verb has reported its interrupt: click turns an interrupt outside the
# verb (while it parses the command line) into exit 130 without a word.
_reported: list[bool] = []

# A reader closed stdout's pipe (`secpack ... | head -c0`): 128 + SIGPIPE, the
# status a shell shows for any Unix tool that the signal ended.
EXIT_BROKEN_PIPE = 141


def _stdout_failed(err: StdoutError) -> int:
    """Report a verb whose report stdout would not take (after its work succeeded),
    and return the exit status: a broken pipe ends quietly, as it ends `cat`."""
    from secpack.cli.render import write_err

    if err.broken_pipe:
        return EXIT_BROKEN_PIPE
    # stderr only: the JSON object of --json has nowhere to go.
    write_err(f"error[{err.code}]: {err.detail}\n")
    return exit_status(err.code)


# What a verb out of memory or threads is told to try: seal's options, verify's
# and open's, and what is left to any other verb.
LESS_SEAL = "--threads 1 and a smaller --segment-size need less"
LESS_READ = "--threads 1 needs less"
_LESS_ANY = "the process may use less memory than this needs (ulimit -v, a container's limit)"


def _run(as_json: bool, action: Callable[[], None], less: str = _LESS_ANY) -> None:
    """Run one verb; every failure becomes ``error[code]: message`` and a non-zero exit."""
    from secpack.interrupts import verb

    try:
        # An interrupt after the verb's output is in place is held to the verb's
        # end and dropped: the verb finishes, records and reports its work.
        with verb(deliver=False):
            action()
    except StdoutError as err:
        raise typer.Exit(_stdout_failed(err)) from None
    except SecpackError as err:
        from secpack.cli.render import fail

        fail(resource_limit(err, less) or err, as_json)
        raise typer.Exit(exit_status(err.code)) from None
    except KeyboardInterrupt:
        from secpack.cli.render import fail
        from secpack.entry import INTERRUPTED, interrupt_status

        fail(SecpackError("interrupted", INTERRUPTED), as_json)
        _reported.append(True)
        raise typer.Exit(interrupt_status()) from None
    except (ValueError, TypeError) as exc:
        from secpack.cli.render import fail

        if os.environ.get("SECPACK_DEBUG"):
            raise
        fail(SecpackError("input.invalid", str(exc)), as_json)
        raise typer.Exit(exit_status("input.invalid")) from None
    except Exception as exc:
        from secpack.cli.render import fail

        if os.environ.get("SECPACK_DEBUG"):
            raise
        # Out of memory or of threads (ulimit -v, a container's limits), here or in a
        # module imported late: a limit of this machine, said as one.
        limit = resource_limit(exc, less)
        if limit is not None:
            fail(limit, as_json)
            raise typer.Exit(exit_status(limit.code)) from None
        if isinstance(exc, OSError):
            fail(SecpackError("output.io", f"{exc.strerror or exc}: {exc.filename or ''}"), as_json)
            raise typer.Exit(1) from None
        fail(SecpackError("internal", f"{type(exc).__name__}: {exc}"), as_json)
        raise typer.Exit(exit_status("internal")) from None


def _version(value: bool) -> None:
    if value:
        from secpack import __version__
        from secpack.cli.render import write_out

        write_out(f"secpack {__version__}\n")  # a StdoutError ends in main()
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    audit_key: Annotated[
        str | None,
        typer.Option(
            "--audit-key",
            metavar="KEY",
            help="Sign every audit-log record with this key (also $SECPACK_AUDIT_KEY).",
        ),
    ] = None,
) -> None:
    """Seal ML models into signed, encrypted, compressed packages, and open them safely."""
    if audit_key:
        os.environ["SECPACK_AUDIT_KEY"] = audit_key


from secpack.cli import audit_cmds, commands, sign_cmds  # noqa: E402,F401  (registers the verbs)


def main() -> NoReturn:
    """The console script. Once the command has finished (its output files are
    closed, fsynced and renamed, its audit record written), the process leaves
    without the interpreter's teardown of every module, which took 60-80 ms of a
    `secpack verify` here: more than the signature check. Standard streams are
    flushed first; nothing else of secpack's is left open by then."""
    _reported.clear()
    from secpack.interrupts import hold_to_exit

    # Once a verb has its outcome, only the report and os._exit are left: a signal
    # then must not turn a finished verb into "interrupted" (secpack.interrupts).
    hold_to_exit()
    try:
        app()
        code = 0
    except StdoutError as err:  # --version's line that stdout did not take
        code = _stdout_failed(err)
    except OSError as exc:  # help text that stdout did not take (click lets it out)
        # click ends a broken pipe itself (exit 1); what escapes is any other failure.
        code = _stdout_failed(StdoutError(exc.strerror or str(exc)))
    except KeyboardInterrupt:  # outside a verb: while parsing or printing
        from secpack.entry import interrupted

        interrupted("--json" in sys.argv[1:])
    except SystemExit as done:
        if done.code == 130 and not _reported:  # click's silent exit for an interrupt
            from secpack.entry import interrupted

            interrupted("--json" in sys.argv[1:])
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:  # a message instead of a status, as sys.exit("...") gives
            print(done.code, file=sys.stderr)
            code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)

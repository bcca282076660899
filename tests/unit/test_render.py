"""What the CLI prints from a package: nothing a terminal would act on, and any
signed time, however far off, without a crash."""

from __future__ import annotations

import pytest

from secpack.cli import sign_cmds
from secpack.cli.render import fail, human_time, out, printable
from secpack.errors import SecpackError


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain name.safetensors", "plain name.safetensors"),
        ("\x1b]0;pwned\x07\x1b[2J", "\\x1b]0;pwned\\x07\\x1b[2J"),
        ("ok\r\n  1 cose-sign1 trusted", "ok\\x0d\\x0a  1 cose-sign1 trusted"),
        ("\x9b31m\x7f", "\\x9b31m\\x7f"),
        ("abc\u202edcba\u2066", "abc\\u202edcba\\u2066"),
        ("one\u2028two\u2029", "one\\u2028two\\u2029"),
        ("naïve ünïcode 模型", "naïve ünïcode 模型"),
    ],
)
def test_printable_escapes_what_a_terminal_acts_on(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_human_output_and_errors_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    out({"name": "\x1b[2J"}, False, ["name: \x1b[2J"], False)
    fail(SecpackError("schema.invalid", "bad path '\x1b[2J'"), False)
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert captured.out == "name: \\x1b[2J\n"
    out({"name": "\x1b[2J"}, True, [], False)  # JSON escapes on its own
    assert capsys.readouterr().out == '{"name": "\\u001b[2J", "ok": true}\n'


@pytest.mark.parametrize("ts", [2**63 - 1, 2**64 - 1, 253402300800, 10**20])
def test_times_past_the_calendar_are_shown_as_numbers(ts: int) -> None:
    assert human_time(ts).startswith(str(ts))
    assert sign_cmds._time(ts) == str(ts)


def test_ordinary_times() -> None:
    assert human_time(0) == "1970-01-01 00:00:00 UTC"
    assert human_time(None) == "never"
    assert sign_cmds._time(86400) == "1970-01-02 00:00:00Z"


def test_an_interrupt_is_a_typed_error_in_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import typer

    from secpack.cli import _run

    def stopped() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as done:
        _run(True, stopped)
    assert done.value.exit_code == 130
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["code"] == "interrupted"
    assert captured.err.startswith("error[interrupted]: ")


def test_a_report_stdout_does_not_take_is_stdout_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed or failing stdout is a StdoutError (stdout.io), not an OSError that
    would read as the failure of the package output (output.io)."""
    import io

    from secpack.errors import StdoutError

    monkeypatch.setattr("sys.stdout", None)
    with pytest.raises(StdoutError) as closed:
        out({}, True, [], False)
    assert closed.value.code == "stdout.io" and not closed.value.broken_pipe

    class Pipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Pipe())
    with pytest.raises(StdoutError) as broken:
        out({}, False, ["x"], False)
    assert broken.value.code == "stdout.io" and broken.value.broken_pipe
    out({}, False, ["x"], True)  # quiet: nothing to write, nothing to fail


@pytest.mark.parametrize("stdout", ["closed", "failing"])
def test_reporting_an_error_never_raises(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdout: str
) -> None:
    import io

    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    capsys.readouterr()
    monkeypatch.setattr("sys.stdout", None if stdout == "closed" else Full())
    fail(SecpackError("input.missing", "x.spk does not exist"), True)
    assert capsys.readouterr().err == "error[input.missing]: x.spk does not exist\n"
    monkeypatch.setattr("sys.stderr", None)
    fail(SecpackError("input.missing", "x.spk does not exist"), True)

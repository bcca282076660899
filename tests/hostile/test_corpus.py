"""The hostile corpus (tests/hostile/generate.py) against every way of reading a
package, every time the tests run.

For each case and each way of reading it (``verify``, ``open``, ``load``):

- the CLI, run in-process (helpers.run_cli), exits non-zero with
  ``error[<expected code>]: ...`` first on stderr and no traceback anywhere
  (``load`` has no CLI verb: the library only);
- the library, run by tests/hostile/runner.py in a subprocess of the venv's
  interpreter (started in the background while the CLI checks run), raises a
  SecpackError with the expected code;
- nothing is left behind: the -o path is absent (or exactly as a case planted
  it), with no ``.*.secpack-tmp-*`` sibling, after the CLI and after extract;
- the runner process's peak RSS stays under 256 MiB and no single read of a
  case takes 2 s of CPU (wall time is bounded more loosely, at 10 s, because
  the machines that run this suite are shared; both are reported).

Where an expectation is ``ok`` that way of reading legitimately succeeds (the
case says why). Known secpack bugs are strict xfails: they fail loudly once fixed.
Cases marked ``isolate`` (CBOR bombs that may break the resource bounds) get a
runner process of their own, so that they cannot hide or cause a breach elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import clean_env, run_cli

from secpack.errors import CODES

HERE = Path(__file__).resolve().parent
OPS = ("verify", "open", "load")
MAX_RSS_KIB = 256 * 1024
MAX_CPU_SECONDS = 2.0
MAX_WALL_SECONDS = 10.0


def _module(name: str, file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the body runs
    spec.loader.exec_module(module)
    return module


hostile = _module("hostile_generate", "generate.py")
runner = _module("hostile_runner", "runner.py")
CASES = hostile.CASES
MAIN = [c for c in CASES if not c.isolate]
ISOLATED = [c for c in CASES if c.isolate]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="hostile-", dir=runner.scratch_root()))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(scratch: Path) -> Path:
    out = scratch / "corpus"
    hostile.generate(out)
    return out


@pytest.fixture(scope="module")
def records(corpus: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in runner.load_cases(corpus)}


class Background:
    """Subprocesses started as soon as the corpus exists, so that they use the second
    core while this process runs the CLI checks: the library runner over the main
    cases, one runner per isolated case, and a second generation of the corpus."""

    def __init__(self, corpus: Path, scratch: Path) -> None:
        self.scratch = scratch
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        runner_py = str(HERE / "runner.py")
        ids = ",".join(c.id for c in MAIN)
        self._spawn("library", [runner_py, str(corpus), "--ids", ids])
        for c in ISOLATED:
            self._spawn(c.id, [runner_py, str(corpus), "--ids", c.id, "--ops", "verify"])
        self._spawn("again", [str(HERE / "generate.py"), "--out", str(scratch / "again")])

    def _spawn(self, name: str, args: list[str]) -> None:
        with (
            open(self.scratch / f"{name}.out", "wb") as out,
            open(self.scratch / f"{name}.err", "wb") as err,
        ):
            self.procs[name] = subprocess.Popen(
                [sys.executable, *args], stdout=out, stderr=err, env=clean_env()
            )

    def wait(self, name: str) -> str:
        proc = self.procs[name]
        proc.wait(timeout=600)
        err = (self.scratch / f"{name}.err").read_text()
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        return (self.scratch / f"{name}.out").read_text()

    def report(self, name: str) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.wait(name))
        return report

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def background(corpus: Path, scratch: Path) -> Iterator[Background]:
    bg = Background(corpus, scratch)
    try:
        yield bg
    finally:
        bg.stop()


@pytest.fixture(scope="module")
def library(background: Background) -> dict[str, Any]:
    """Every case but the isolated ones, all three ways, in one runner process."""
    return background.report("library")


def run_checks(case: Any, checks: list[tuple[str, Callable[[], None]]]) -> None:
    """Run each (op, check); an op with a known secpack bug must still fail its check
    (a strict xfail: once the bug is fixed, the case must be updated)."""
    known = []
    for op, check in checks:
        if op not in case.bugs:
            check()
            continue
        try:
            check()
        except AssertionError as exc:
            known.append(f"{op}: {case.bugs[op]} [{str(exc).splitlines()[0]}]")
            continue
        pytest.fail(f"{case.id}: known bug no longer shows for {op}; update the case")
    if known:
        pytest.xfail("secpack bug: " + "; ".join(known))


# --- the corpus itself ------------------------------------------------------------------------


def test_corpus_shape() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)
    assert {c.cls for c in CASES} == set(hostile.CLASSES)
    for c in CASES:
        for op in OPS:
            expected = c.expect(op)
            assert all(code == hostile.OK or code in CODES for code in expected), (c.id, op)
            # Several codes only where the case explains the ambiguity.
            assert len(expected) == 1 or c.why, (c.id, op)
            # A way of reading that accepts a hostile case must say why.
            assert expected != (hostile.OK,) or c.why, (c.id, op)
        assert set(c.bugs) <= {*OPS, "resources"}, c.id
        assert any(c.expect(op) != (hostile.OK,) for op in OPS), c.id


def test_table_is_current() -> None:
    """TABLE.md is what `generate.py --table` writes for these cases."""
    assert (HERE / "TABLE.md").read_text() == hostile.render_table()


# --- controls: the forged baselines are valid packages ------------------------------------------


def _trust(corpus: Path) -> list[str]:
    return ["--trust", str(corpus / hostile.TRUST_KEY)]


@pytest.mark.parametrize("name", ["valid-enc", "valid-plain", "file-run-enc", "file-run-plain"])
def test_forged_baseline_opens(corpus: Path, scratch: Path, name: str) -> None:
    """Every case is one defect away from these: they verify and open, byte for byte."""
    from helpers import assert_same_tree

    pkg = corpus / "controls" / f"{name}.spk"
    state = {"SECPACK_STATE_DIR": str(scratch / f"state-{name}")}
    res = run_cli("verify", pkg, *_trust(corpus), env=state)
    assert res.returncode == 0, str(res)
    out = scratch / f"opened-{name}"
    ident = corpus / "keys" / "recipient-x25519.key"
    res = run_cli("open", pkg, "-o", out, "--identity", ident, *_trust(corpus), env=state)
    assert res.returncode == 0, str(res)
    assert_same_tree(corpus / "controls" / "model", out)
    shutil.rmtree(out)


def test_sixty_signatures_are_accepted(corpus: Path, scratch: Path) -> None:
    """Regression: the signature-section item cap once refused 53..64 signatures."""
    pkg = corpus / "controls" / "signatures-60.spk"
    state = {"SECPACK_STATE_DIR": str(scratch / "state-sig60")}
    res = run_cli("verify", pkg, *_trust(corpus), env=state)
    assert res.returncode == 0, str(res)


# --- every case, every way of reading it -------------------------------------------------------


def _cli_args(corpus: Path, rec: dict[str, Any], op: str, out: Path) -> list[Any]:
    trust: list[Any] = []
    for t in rec["trust"]:
        trust += ["--trust", corpus / t]
    if rec["policy"]:
        trust += ["--policy", corpus / rec["policy"]]
    name = ["--name", rec["name"]] if rec["name"] else []
    pkg = corpus / rec["package"]
    if op == "verify":
        return ["verify", pkg, *trust, *name]
    return ["open", pkg, "-o", out, "--identity", corpus / rec["identity"], *trust, *name]


def check_cli(case: Any, op: str, corpus: Path, rec: dict[str, Any], work: Path) -> None:
    state = work / "state"
    runner.prepare_state(state, rec["state"])
    parent = work / "parent"
    parent.mkdir()
    out = runner.prepare_output(parent, rec["outdir"] if op == "open" else "fresh")
    before = runner.snapshot(parent)
    res = run_cli(*_cli_args(corpus, rec, op, out), env={"SECPACK_STATE_DIR": str(state)})
    assert "Traceback" not in res.stdout + res.stderr, str(res)
    expected = case.expect(op)
    if res.returncode == 0:
        assert hostile.OK in expected, f"CLI {op} accepted it\n{res}"
        return
    assert res.error_code in expected, f"CLI {op}: {res.error_code}, expected {expected}\n{res}"
    assert res.returncode == 1, str(res)
    # Nothing written, nothing left behind, nothing planted touched.
    assert runner.snapshot(parent) == before


def check_library(case: Any, op: str, result: dict[str, Any]) -> None:
    got = result["code"]
    expected = case.expect(op)
    assert got in expected, f"library {op}: {got}, expected {expected}"
    if got != hostile.OK:
        assert result["changed"] == [], f"library {op} left {result['changed']}"


# The isolated cases are CBOR bombs that the reader decodes before it looks at any
# signature; `open` runs the very same header path (api/trust.establish_trust) as
# `verify`, so only verify is run for them, to keep a 3-6 s case from costing 4 times that.
def _cli_ops(case: Any) -> tuple[str, ...]:
    return ("verify",) if case.isolate else ("verify", "open")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli(
    case: Any,
    corpus: Path,
    records: dict[str, dict[str, Any]],
    background: Background,
    scratch: Path,
) -> None:
    """`secpack verify` and `secpack open` (in-process, helpers.run_cli)."""
    checks = []
    for op in _cli_ops(case):
        work = scratch / "cli" / f"{case.id}-{op}"
        work.mkdir(parents=True)
        checks.append(
            (op, partial(check_cli, case, op, corpus, records[case.id], work)),
        )
    try:
        run_checks(case, checks)
    finally:
        shutil.rmtree(scratch / "cli", ignore_errors=True)


@pytest.mark.parametrize("case", MAIN, ids=[c.id for c in MAIN])
def test_library(case: Any, library: dict[str, Any]) -> None:
    """verify, extract and open_package + state_dict/read_file (runner.py)."""
    result = library["cases"][case.id]
    run_checks(case, [(op, partial(check_library, case, op, result[op])) for op in OPS])


def test_library_resources(library: dict[str, Any]) -> None:
    """Peak RSS of the whole run (a high-water mark) and time per read of a case."""
    assert library["maxrss_kib"] < MAX_RSS_KIB, f"peak RSS {library['maxrss_kib']} KiB"
    slow = [
        (cid, op, r["cpu"], r["seconds"])
        for cid, ops in library["cases"].items()
        for op, r in ops.items()
        if r["cpu"] >= MAX_CPU_SECONDS or r["seconds"] >= MAX_WALL_SECONDS
    ]
    assert not slow, slow
    assert set(library["cases"]) == {c.id for c in MAIN}


@pytest.mark.parametrize("case", ISOLATED, ids=[c.id for c in ISOLATED])
def test_isolated_library(case: Any, background: Background) -> None:
    report = background.report(case.id)
    check_library(case, "verify", report["cases"][case.id]["verify"])


def _resource_params() -> list[Any]:
    out = []
    for c in ISOLATED:
        marks = []
        if "resources" in c.bugs:
            reason = f"secpack bug: {c.bugs['resources']}"
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


@pytest.mark.parametrize("case", _resource_params())
def test_isolated_resources(case: Any, background: Background) -> None:
    report = background.report(case.id)
    result = report["cases"][case.id]["verify"]
    assert report["maxrss_kib"] < MAX_RSS_KIB, f"peak RSS {report['maxrss_kib'] // 1024} MiB"
    assert result["cpu"] < MAX_CPU_SECONDS, f"{result['cpu']} s of CPU"
    assert result["seconds"] < MAX_WALL_SECONDS, f"{result['seconds']} s"


def test_generator_is_deterministic(corpus: Path, scratch: Path, background: Background) -> None:
    """A second run of generate.py, in another process, writes the same bytes."""
    background.wait("again")
    again = scratch / "again"
    for sub in ("cases", "controls"):
        names = sorted(os.listdir(corpus / sub))
        assert names == sorted(os.listdir(again / sub))
        for name in names:
            if name.endswith(".spk"):
                same = (corpus / sub / name).read_bytes() == (again / sub / name).read_bytes()
                assert same, f"{sub}/{name} differs between two runs"
    assert (corpus / "cases.json").read_text() == (again / "cases.json").read_text()
    shutil.rmtree(again)


_TABLE_READS: dict[str, Callable[[Any], object]] = {
    "tensor_names": lambda pkg: pkg.tensor_names("weights"),
    "tensor_info": lambda pkg: pkg.tensor_info(pkg._component("weights").contents.tensors[0].name),
    "files": lambda pkg: pkg.files("weights"),
    "tensor": lambda pkg: pkg.tensor(pkg._component("weights").contents.tensors[0].name),
    "iter_tensors": lambda pkg: list(pkg.iter_tensors("weights")),
    "export_safetensors": lambda pkg: pkg.export_safetensors(),
    "read_file": lambda pkg: pkg.read_file(
        "weights", pkg._component("weights").contents.files[0].path
    ),
}


@pytest.mark.parametrize("read", sorted(_TABLE_READS))
@pytest.mark.parametrize("cid", ["header-disagrees-dtype-enc", "header-disagrees-name-plain"])
def test_every_loader_read_of_a_table_its_header_contradicts_is_refused(
    corpus: Path, records: dict[str, dict[str, Any]], cid: str, read: str
) -> None:
    """The loader serves nothing of a file, its table records included, before the
    file's stored safetensors header has been found to agree with the table: each
    way of reading, on a package of its own (checks are made once per package)."""
    import secpack
    from secpack.errors import SecpackError

    rec = records[cid]
    with (
        secpack.open_package(
            corpus / rec["package"],
            identity=str(corpus / rec["identity"]),
            policy=runner._policy(corpus, rec),
            expected_name=rec["name"],
        ) as pkg,
        pytest.raises(SecpackError) as err,
    ):
        _TABLE_READS[read](pkg)
    assert err.value.code == "tensor.invalid"


def test_inspect_with_an_identity_refuses_a_table_its_header_contradicts(
    corpus: Path, records: dict[str, dict[str, Any]]
) -> None:
    rec = records["header-disagrees-shape-enc"]
    trust = [a for t in rec["trust"] for a in ("--trust", corpus / t)]
    res = run_cli(
        "inspect", corpus / rec["package"], "--identity", corpus / rec["identity"], *trust
    )
    assert res.returncode != 0 and res.error_code == "tensor.invalid", str(res)

"""The fuzz harness itself (fuzz/): its seeds must still be valid cases of their
targets, or `make fuzz` would start from inputs every check refuses at once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from secpack.codec import planes

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", ROOT / "fuzz" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not planes.NATIVE, reason="the codec seeds are written by the C helper")
def test_codec_seeds_decode_through_their_targets() -> None:
    seeds, targets = _load("seeds"), _load("targets")
    bgx_seeds = seeds._bgx_seeds()
    assert len(bgx_seeds) == 9
    for data in bgx_seeds:
        assert targets.bgx_case(data) is not None
        targets.target_bgx(data)  # raises on any disagreement between decoders
    ans_seeds = seeds._ans_seeds()
    assert len(ans_seeds) == 5
    for data in ans_seeds:
        targets.target_ans(data)


def test_the_cbor_target_runs_on_its_seeds() -> None:
    targets = _load("targets")
    vectors = sorted((ROOT / "tests" / "vectors").glob("*.spk"))
    assert vectors
    for vector in vectors:
        data = vector.read_bytes()
        manifest = data[32 : 32 + int.from_bytes(data[12:16], "big")]
        for limits in range(4):  # the first byte picks the target's limits
            targets.target_cbor(bytes([limits]) + manifest)
            targets.target_cbor(bytes([limits]) + manifest[:-3])

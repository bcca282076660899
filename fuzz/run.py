"""Run one fuzz target under atheris (coverage-guided, libFuzzer flags pass through).

    .venv/bin/python fuzz/run.py header -max_total_time=600 fuzz/corpus/header fuzz/seeds/header
    make fuzz TARGET=open SECONDS=600

Seeds are built by ``fuzz/seeds.py`` from the golden vectors and the hostile corpus.
"""

from __future__ import annotations

import sys
import warnings

import atheris

with atheris.instrument_imports(include=["secpack"]):
    import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: run.py {{{','.join(targets.TARGETS)}}} [libFuzzer flags] [corpus dirs]")
    target = targets.TARGETS[sys.argv[1]]
    warnings.simplefilter("ignore")  # DtypeWarning for bf16 without ml_dtypes is expected

    def one(data: bytes) -> None:
        target(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

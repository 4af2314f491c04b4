"""Run every benchmark (``just bench``): each ``bench/bench_*.py`` module's ``run()``."""

from __future__ import annotations

import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    """Run the benchmarks named in ``argv`` (module suffixes, e.g. ``breaker``) or all."""
    sys.path.insert(0, str(HERE))
    wanted = set(argv)
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem
        if wanted and name.removeprefix("bench_") not in wanted:
            continue
        module = importlib.import_module(name)
        module.run()


if __name__ == "__main__":
    main(sys.argv[1:])

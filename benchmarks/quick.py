"""`--quick` for every benchmark: its smallest run, which checks that the script still works end to end
(tests/test_benchmarks.py runs each so). A quick run's figures mean nothing; options given with
`--quick` still win over its sizes."""
from __future__ import annotations

import argparse
from pathlib import Path

SMOKE = str(Path(__file__).resolve().parents[1] / "experiments" / "smoke.toml")  # a tiny model and corpus


def parse_args(parser: argparse.ArgumentParser, **quick) -> argparse.Namespace:
    sizes = " ".join(f"--{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
                     for key, value in quick.items())
    parser.add_argument("--quick", action="store_true", help=f"the smallest run, to check the script works ({sizes})")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**quick)
    return parser.parse_args()

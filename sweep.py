"""Run the trials of an experiment file and record them in MLflow.

    python sweep.py                          # experiments/default.toml on the built-in corpus
    python sweep.py experiments/fsdd.toml --set data.root=/path/to/recordings
"""
from __future__ import annotations

import argparse
import signal
import sys
import tomllib

from study.config import ConfigError, load_config
from study.data.manifest import DataError
from study.tracking import resolve_tracking_uri
from study.trial import run_trial


def parse_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE with VALUE read as a TOML value (bare words are taken as strings)."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            overrides[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key] = raw
    return overrides


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", default="experiments/default.toml",
                        help="experiment TOML file (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                        "else sqlite:///<cwd>/runs/mlflow.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration key, e.g. --set train.epochs=2 (repeatable)")
    args = parser.parse_args(argv)
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the MLflow run is closed as KILLED, not left RUNNING.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cfg = load_config(args.experiment, parse_overrides(args.overrides))
        metrics = run_trial(cfg, resolve_tracking_uri(args.tracking_uri)).metrics
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"finished {cfg.tracking.experiment}: test WER {metrics['test/wer']:.2%}, "
          f"CER {metrics['test/cer']:.2%}, {metrics['params/total']:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

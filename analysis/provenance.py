"""The provenance card of an experiment's tables and figures: when, with what code and where its
finished runs were made, from what the runs recorded (`code_version`, the `env.*` tags). One line
under every Markdown table and in every figure's file metadata, and `provenance.md` beside them with
the runs counted per code version and machine. Runs made before the `env.*` tags say "not recorded"."""
from __future__ import annotations

import pandas as pd

from analysis.tables import Column, Table, as_text

UNRECORDED = "not recorded"
MACHINE = ("tags.env.cpu", "tags.env.cores", "tags.env.threads", "tags.env.gpu")
LIBRARIES = ("torch", "torchaudio", "optuna", "mlflow")


def _trial_runs(runs: pd.DataFrame, run_ids: pd.Series) -> pd.DataFrame:
    chosen = runs[runs["run_id"].isin(run_ids)].copy()
    for column in ("params.code_version", "tags.env.code_hash", *MACHINE, *(f"tags.env.{n}" for n in LIBRARIES)):
        chosen[column] = chosen[column].fillna(UNRECORDED) if column in chosen.columns else UNRECORDED
    return chosen


def _machine(row: pd.Series) -> str:
    if row["tags.env.cpu"] == UNRECORDED:
        return UNRECORDED
    gpu = "" if row["tags.env.gpu"] in ("none", UNRECORDED) else f", {row['tags.env.gpu']}"
    return f"{row['tags.env.cpu']}, {row['tags.env.cores']} cores, {row['tags.env.threads']} thread(s){gpu}"


def _dates(runs: pd.DataFrame) -> str:
    days = sorted({t.strftime("%Y-%m-%d") for t in pd.to_datetime(runs["start_time"], utc=True).dropna()})
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else UNRECORDED


def _joined(values) -> str:
    return ", ".join(sorted(set(values)))


def card(runs: pd.DataFrame, run_ids: pd.Series) -> str:
    """One line: dates, commits, code hashes, machines and library versions of the runs."""
    chosen = _trial_runs(runs, run_ids)
    versions = ", ".join(f"{name} {_joined(chosen[f'tags.env.{name}'])}" for name in LIBRARIES)
    return (f"Provenance: {len(chosen)} runs made {_dates(chosen)}; commit {_joined(chosen['params.code_version'])}; "
            f"code hash {_joined(chosen['tags.env.code_hash'])}; machine {_joined(chosen.apply(_machine, axis=1))}; "
            f"{versions}.")


def provenance_table(runs: pd.DataFrame, run_ids: pd.Series) -> Table:
    """Runs per (commit, code hash, machine, versions), with their dates."""
    chosen = _trial_runs(runs, run_ids)
    chosen["machine"] = chosen.apply(_machine, axis=1)
    chosen["versions"] = chosen.apply(lambda r: ", ".join(f"{n} {r[f'tags.env.{n}']}" for n in LIBRARIES), axis=1)
    keys = ["params.code_version", "tags.env.code_hash", "machine", "versions"]
    rows = [{"commit": commit, "code_hash": code, "machine": machine, "versions": versions, "runs": str(len(group)),
             "dates": _dates(group)}
            for (commit, code, machine, versions), group in chosen.groupby(keys, sort=True)]
    columns = [Column(name, header, name, as_text) for name, header in
               (("commit", "Commit"), ("code_hash", "Code hash"), ("machine", "Machine"), ("versions", "Versions"),
                ("runs", "Runs"), ("dates", "Made"))]
    return Table(columns, pd.DataFrame(rows, columns=[c.name for c in columns]))

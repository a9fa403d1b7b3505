"""The ``vaesweep`` command: collect results into a table, draw the paper figures, score
finished runs again.

    vaesweep collect SWEEP_DIR... [-o FILE.csv|FILE.parquet] [--aggregate]
    vaesweep collect --wandb ENTITY/PROJECT --group GROUP [-o FILE]
    vaesweep figures SWEEP_DIR... [--out DIR] [--evaluation iwae_k=5000,checkpoint=last]
    vaesweep figures --analytic [--out DIR]
    vaesweep evaluate SWEEP_DIR... [eval.iwae_k=5000 ...]

Bad input (no results, mixed datasets, no completed run, unknown format) prints one line
``vaesweep: error: ...`` to stderr and exits 1, before any file is written. A figure that
fails to draw is named the same way (exit 1) after every other file is written and listed.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from vaesweep.analysis.results import (
    ResultsError,
    aggregate,
    excluded_message,
    find_results,
    load_results,
    load_wandb,
    unaggregated_message,
    use_evaluation,
    write_frame,
)
from vaesweep.run.record import COMPLETED, SUMMARY_COLUMNS

# The subcommands (``python -m vaesweep`` sends anything else to training).
COMMANDS = ("collect", "figures", "evaluate")
#: The columns ``collect`` prints: those of a sweep's summary table.
SHOWN = ("status", *SUMMARY_COLUMNS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaesweep",
        description="From sweep to paper: collect run results, draw publication figures, "
        "score finished runs again. Training is vaesweep-train (or python -m vaesweep "
        "without a COMMAND): vaesweep-train --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collect = sub.add_parser(
        "collect",
        help="load every results.json under the given dirs into one table",
        description="Load every results.json found (recursively) under SWEEP_DIR... into one "
        "table: one row per run, columns for the swept values, every metric, status, seed, "
        "duration and the flattened config (config.*). Without -o, prints the main columns.",
    )
    collect.set_defaults(command_parser=collect)  # its usage errors show its own usage
    collect.add_argument("dirs", nargs="*", metavar="SWEEP_DIR", help="sweep or run directories")
    collect.add_argument("-o", "--output", type=Path, help="write the table here: .csv or .parquet")
    collect.add_argument(
        "--aggregate",
        action="store_true",
        help="one row per configuration: mean, std, sem and count of each metric over seeds "
        "(completed runs only)",
    )
    collect.add_argument(
        "--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (online)"
    )
    collect.add_argument("--group", help="the W&B group (the sweep) to read, with --wandb")

    figures = sub.add_parser(
        "figures",
        help="draw the paper figures of a sweep (or the analytic ones)",
        description="Draw every sweep figure (NLL/ELBO vs beta, rate-distortion, "
        "reconstructions, samples, scale and schedule histories) as PDF + PNG, and the "
        "results table as Markdown + LaTeX. Figures the sweep cannot support are skipped "
        "with the reason. --analytic draws the loss-landscape figures instead.",
    )
    figures.set_defaults(command_parser=figures)  # its usage errors show its own usage
    figures.add_argument("dirs", nargs="*", metavar="SWEEP_DIR", help="sweep or run directories")
    figures.add_argument(
        "--out",
        type=Path,
        help="output directory (default: SWEEP_DIR/figures, or outputs/figures/analytic)",
    )
    figures.add_argument("--analytic", action="store_true", help="the analytic figures")
    figures.add_argument(
        "--evaluation",
        metavar="NAME",
        help="use the test metrics of `vaesweep evaluate` NAME (e.g. iwae_k=5000,checkpoint=last) "
        "instead of those computed at training time; every completed run must have it",
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="score finished runs again with more importance samples (no retraining)",
        description="Score every completed run under SWEEP_DIR... again from its checkpoint "
        "(completed as collect says: not a fast_dev_run, nor a result without test metrics; "
        "each run left out is named with its status), "
        "with eval.iwae_k importance samples (Burda et al.: 5000), without retraining, on "
        "the test examples the run was scored on (its trainer.limit_test_batches kept). Each "
        "result goes to <run>/evaluations/iwae_k=K,checkpoint=C.json, beside results.json; "
        "one that exists is not computed again. collect and figures read them as the "
        "columns test/nll@iwae_k=K,checkpoint=C etc.",
    )
    evaluate.set_defaults(command_parser=evaluate)  # its usage errors show its own usage
    evaluate.add_argument("dirs", nargs="+", metavar="SWEEP_DIR", help="sweep or run directories")
    evaluate.add_argument(
        "settings",
        nargs="*",
        metavar="KEY=VALUE",
        help="eval.iwae_k=5000 (default), eval.checkpoint=last|best (default last), "
        "eval.iwae_chunk=N (samples decoded at once; default: sized automatically), "
        "eval.test_examples=N (the first N test examples only, with ',test_examples=N' "
        "added to the name unless they are the run's own; default: the test examples the "
        "run was scored on). Each key once",
    )
    return parser


def _collect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.wandb:
        if args.dirs or not args.group:
            parser.error("--wandb takes --group GROUP and no SWEEP_DIR")
        # A listing shows the runs whatever their status (why none completed, say).
        df = load_wandb(args.wandb, args.group, completed_required=args.aggregate)
        source = f"W&B {args.wandb}, group {args.group}"
    elif args.dirs:
        if args.group:
            parser.error(
                f"--group {args.group} selects a W&B group: it needs --wandb ENTITY/PROJECT"
            )
        df = load_results(*args.dirs, completed_required=args.aggregate)
        source = ", ".join(args.dirs)
    else:
        parser.error("give SWEEP_DIR... or --wandb ENTITY/PROJECT --group GROUP")
    statuses = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
    print(f"{len(df)} runs ({statuses}) from {source}", file=sys.stderr)
    _notes(df, excluded=args.aggregate)
    table = aggregate(df) if args.aggregate else df
    if args.output:
        print(f"wrote {write_frame(table, args.output)}", file=sys.stderr)
    elif args.aggregate:
        print(table.to_string(index=False))
    else:
        shown = [*df.attrs["swept"], *(c for c in SHOWN if c in df.columns)]
        if not (df["status"] == COMPLETED).any():  # no metrics to show: why none completed
            shown += ["job_name", "error"]
        print(df[list(dict.fromkeys(shown))].to_string(index=False))


def _notes(df: Any, excluded: bool) -> None:
    """What the user should know of the runs found, one ``note:`` line each on stderr."""
    notes = list(df.attrs.get("notes", []))
    if excluded:
        notes += [m for m in (excluded_message(df), unaggregated_message(df)) if m]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _run_or_sweep_dir(path: str) -> Path:
    """A directory given on the command line, or the run directory of a results.json."""
    return Path(path).parent if Path(path).is_file() else Path(path)


def _figures(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.analytic == bool(args.dirs):
        parser.error("give SWEEP_DIR... or --analytic (not both)")
    # Results are loaded (and bad input reported) before the plotting stack is imported.
    df = None if args.analytic else load_results(*args.dirs)
    if args.evaluation and df is None:
        parser.error("--evaluation goes with SWEEP_DIR..., not --analytic")
    if args.evaluation:
        df = use_evaluation(df, args.evaluation)
    from vaesweep.analysis.figures import (  # heavy: matplotlib, after the results loaded
        FiguresFailed,
        write_analytic_figures,
        write_sweep_figures,
    )

    failed = None
    try:
        if df is None:
            report = write_analytic_figures(args.out or Path("outputs") / "figures" / "analytic")
        else:
            _notes(df, excluded=True)
            out = args.out or _run_or_sweep_dir(args.dirs[0]) / "figures"
            if out.exists() and not out.is_dir():
                raise ResultsError(f"--out {out}: a file, not a directory")
            report = write_sweep_figures(df, out)
    except FiguresFailed as e:  # the other files were written: listed, then the error
        report, failed = e.report, e
    for reason in report.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for path in report.written:
        print(path)
    if failed is not None:
        print(f"vaesweep: error: {failed}", file=sys.stderr)
        raise SystemExit(1)


EVALUATE_DEFAULTS = {
    "eval.iwae_k": 5000,
    "eval.checkpoint": "last",
    "eval.iwae_chunk": None,
    "eval.test_examples": None,
}


def _setting_value(value: str) -> Any:
    """A setting's text as the config reads it: an integer, null, else the text itself
    (which the settings' checks refuse by key, value and what is allowed)."""
    if re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    return None if value == "null" else value


def evaluate_arguments(items: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``vaesweep evaluate``'s positional arguments → (directories, settings). An existing
    path is a directory, whatever its name holds (job directories are named ``beta=1,...``);
    ``eval.KEY=VALUE`` is a setting; anything else with "=" is a mistyped one. ValueError
    names the argument; a setting given twice is refused (as a run's command line refuses a
    key given twice), not silently the last. Values are checked by
    :func:`vaesweep.run.evaluate.check_settings`."""
    settings = dict(EVALUATE_DEFAULTS)
    given: dict[str, str] = {}
    dirs = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or Path(item).exists():
            dirs.append(item)
            continue
        if key not in settings:
            raise ValueError(
                f"{item} is neither a directory nor a setting: allowed keys {', '.join(settings)}"
            )
        if key in given:
            raise ValueError(
                f"{key} is given twice on the command line ({given[key]} and {item}): only "
                f"the last, {item}, would be used. Give each key once."
            )
        given[key] = item
        settings[key] = _setting_value(value)
    return dirs, settings


def _evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    try:
        dirs, settings = evaluate_arguments([*args.dirs, *args.settings])
    except ValueError as e:
        parser.error(str(e))
    if not dirs:
        parser.error("give SWEEP_DIR...")
    runs = [p.parent for p in find_results(*dirs)]  # a path that does not exist: at once
    # heavy: torch and Lightning, loaded only for this command
    from vaesweep.run.evaluate import check_settings, evaluate_sweep

    keys = ("eval.iwae_k", "eval.checkpoint", "eval.iwae_chunk", "eval.test_examples")
    check_settings(*(settings[k] for k in keys))
    if not runs:
        raise ResultsError(
            f"no results.json found under {', '.join(dirs)}: pass a run or sweep directory "
            "written by `python run.py`"
        )
    print(f"{len(runs)} run(s) found; evaluating the completed ones", file=sys.stderr)
    done, skipped, problems, left_out = evaluate_sweep(
        runs,
        settings["eval.iwae_k"],
        settings["eval.checkpoint"],
        settings["eval.iwae_chunk"],
        settings["eval.test_examples"],
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    # Counted by the status `collect` gives them (fast_dev_run, incomplete, failed, ...).
    counts = Counter(left_out.values())
    left = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(
        f"evaluated {done} run(s); {skipped} already evaluated"
        + (f"; {len(left_out)} not completed, not evaluated ({left})" if left_out else ""),
        file=sys.stderr,
    )
    for problem in problems:
        print(f"not evaluated: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)
    if not done and not skipped:
        raise ResultsError(
            f"none of the {len(runs)} run(s) found completed ({left}): nothing to evaluate"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vaesweep`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # Excluded runs are reported once, above, rather than by every aggregate.
            warnings.filterwarnings("ignore", message=r".* runs excluded from the aggregates")
            commands = {"collect": _collect, "figures": _figures, "evaluate": _evaluate}
            commands[args.command](args, args.command_parser)
    except (ResultsError, ValueError, OSError) as e:  # OSError: an output path (-o, --out)
        print(f"vaesweep: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

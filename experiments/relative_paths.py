"""Rewrite the absolute paths in a published study's runs.csv and sweep.json as relative ones.

    python experiments/relative_paths.py docs/results/<study> --root <checkout the study ran in>

`vaesweep collect` and the sweep record write the absolute paths of the machine that ran the
study (e.g. /work/study/outputs/studies/likelihood_comparison/sweep/beta=1,...). Published
under docs/results/ they say nothing useful to a reader and leak the machine's layout, so:

- runs.csv: ``run_dir`` becomes relative to the run's ``sweep_dir`` (the job directory's
  name, as in summary.csv's ``job`` and sweep.json's ``jobs[].dir``); ``sweep_dir`` and every
  other cell under ``--root`` (the data paths) become relative to ``--root``, so they read
  like the command's ``hydra.sweep.dir=outputs/studies/...``;
- every sweep.json below the study: ``sweep_dir`` relative to ``--root``.

Only those cells change: the other bytes of each file are written back as they were (the
CSV through the csv module, not pandas, so no number is reformatted). Deterministic and
idempotent: a path that is already relative is left alone. A path outside ``--root`` (say a
system dataset directory) is left as it is and listed on stderr; so is every absolute path that
remains (:func:`absolute_paths`). experiments/run_study.sh calls it after every study.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import posixpath
import sys
from pathlib import Path


def relative(path: str, start: str) -> str:
    """``path`` relative to ``start`` (both POSIX); a relative path, or one outside ``start``,
    is returned as is."""
    if not posixpath.isabs(path):
        return path
    start = posixpath.normpath(start)
    norm = posixpath.normpath(path)
    if norm != start and not norm.startswith(start.rstrip("/") + "/"):
        return path
    return posixpath.relpath(norm, start)


def relative_runs_csv(text: str, root: str) -> str:
    """runs.csv text with run_dir relative to sweep_dir and the other paths under root relative
    to root."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    for row in body:
        sweep_dir = row[col["sweep_dir"]] if "sweep_dir" in col else ""
        for i, cell in enumerate(row):
            name = header[i]
            if name == "run_dir" and posixpath.isabs(cell) and posixpath.isabs(sweep_dir):
                row[i] = relative(cell, sweep_dir)
            elif posixpath.isabs(cell):
                row[i] = relative(cell, root)
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([header, *body])
    return out.getvalue()


def relative_sweep_json(text: str, root: str) -> str:
    record = json.loads(text)
    if isinstance(record.get("sweep_dir"), str):
        record["sweep_dir"] = relative(record["sweep_dir"], root)
    return json.dumps(record, indent=2, ensure_ascii=False) + "\n"


def rewrite(study_dir: Path, root: str) -> list[Path]:
    """Rewrite every runs.csv and sweep.json below study_dir; returns the files that changed."""
    new: dict[Path, str] = {}
    for path in sorted(study_dir.rglob("runs.csv")):
        new[path] = relative_runs_csv(path.read_text(), root)
    for path in sorted(study_dir.rglob("sweep.json")):
        new[path] = relative_sweep_json(path.read_text(), root)
    changed = [path for path, text in new.items() if path.read_text() != text]
    for path in changed:
        path.write_text(new[path])
    return changed


def absolute_paths(study_dir: Path) -> list[tuple[str, str]]:
    """(file and column or key, path) for every absolute path left in the study's runs.csv
    and sweep.json files."""
    found = []
    for path in sorted(study_dir.rglob("runs.csv")):
        rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
        for row in rows[1:]:
            found += [(f"{path}:{rows[0][i]}", c) for i, c in enumerate(row) if posixpath.isabs(c)]
    for path in sorted(study_dir.rglob("sweep.json")):
        record = json.loads(path.read_text())
        for key in ("sweep_dir",):
            if isinstance(record.get(key), str) and posixpath.isabs(record[key]):
                found.append((f"{path}:{key}", record[key]))
        for job in record.get("jobs", []):
            if isinstance(job.get("dir"), str) and posixpath.isabs(job["dir"]):
                found.append((f"{path}:jobs[].dir", job["dir"]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path, help="docs/results/<study>")
    parser.add_argument("--root", required=True, help="the checkout the study ran in (absolute)")
    args = parser.parse_args(argv)
    if not posixpath.isabs(args.root):
        parser.error("--root must be absolute")
    for path in rewrite(args.study_dir, args.root):
        print(f"rewrote {path}")
    for where, path in absolute_paths(args.study_dir):
        print(f"relative_paths: absolute path left in {where}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

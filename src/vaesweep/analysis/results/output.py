"""A frame written as CSV or Parquet, atomically."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pandas as pd

from vaesweep.analysis.results.frame import ResultsError
from vaesweep.core.atomic import atomic_open


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns mixing types (e.g. ``trainer.devices`` = 1 or "auto") become strings."""
    out = df.copy()
    for name in out.select_dtypes(include="object").columns:
        kinds = {type(v) for v in out[name] if v is not None and v == v}
        if len(kinds) > 1:
            out[name] = out[name].map(lambda v: None if v is None or v != v else str(v))
    return out


def write_frame(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` as CSV (``.csv``) or Parquet (``.parquet``), atomically; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ResultsError(f"{path}: unknown output format {suffix!r}; use .csv or .parquet")
    if path.is_dir():
        raise ResultsError(f"{path}: a directory; give a file name ending in .csv or .parquet")
    if blocking := next((p for p in path.parents if p.exists() and not p.is_dir()), None):
        raise ResultsError(f"{path}: cannot be written ({blocking} is a file, not a directory)")
    if suffix == ".parquet" and not _parquet_engine():
        raise ResultsError(
            f"{path}: writing Parquet needs pyarrow (or fastparquet), which is not installed: "
            "pip install pyarrow, or write CSV (-o FILE.csv)"
        )
    try:
        with atomic_open(path, "wb") as f:  # the permissions of any new file, not mkstemp's 0600
            if suffix == ".csv":
                df.to_csv(f, index=False)
            else:
                _parquet_safe(df).to_parquet(f, index=False)
    except OSError as e:
        raise ResultsError(f"{path}: cannot be written ({e.strerror or e})") from None
    return path


def _parquet_engine() -> bool:
    """Whether pandas has a Parquet engine that imports (pyarrow or fastparquet): neither is
    a dependency."""
    for module in ("pyarrow.parquet", "fastparquet"):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return True
    return False

"""A frame written as CSV or Parquet, atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from vaesweep.analysis.results.frame import ResultsError


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            _parquet_safe(df).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path

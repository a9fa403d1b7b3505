"""Which runs' numbers can be ranked against each other.

A run's NLL, ELBO and bits/dim are of the data it scored: binarised images for a likelihood
on binary data (the Bernoulli), dequantised grey levels for a density (Gaussian, Laplace,
continuous Bernoulli). A Bernoulli NLL of binarised images and a Gaussian NLL of grey
levels are numbers of different data, so the table bolds the best value within each kind
of data only, and the NLL/ELBO figure draws each kind in panels of its own.

The kind of a run comes from its recorded config: ``data.preprocess`` (``auto`` resolved as
a run resolves it: binarize for a likelihood on binary data, else dequantize) and the
likelihood's ``data_kind``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from vaesweep.model.components import component_class
from vaesweep.model.likelihood_base import data_label
from vaesweep.model.likelihoods import LIKELIHOODS


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def likelihood_data_kind(name: Any, target: Any) -> str:
    """``binary`` or ``continuous``: the data the likelihood is a distribution of."""
    if not _missing(target):
        try:
            options = {"_target_": target} if _missing(name) else {"_target_": target, "name": name}
            return str(component_class("likelihood", options).data_kind)
        except (ValueError, AttributeError):
            pass
    cls = LIKELIHOODS.get(str(name))
    return str(cls.data_kind) if cls is not None else "continuous"


def data_kind(row: pd.Series) -> str:
    """What a run's likelihood numbers are of, as a label (e.g. ``binarised data``)."""
    kind = likelihood_data_kind(
        row.get("config.likelihood.name"), row.get("config.likelihood._target_")
    )
    preprocess = row.get("config.data.preprocess")
    return data_label(kind, None if _missing(preprocess) else preprocess)


def data_kinds(df: pd.DataFrame) -> pd.Series:
    """:func:`data_kind` of every row of ``df`` (same index)."""
    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    return df.apply(data_kind, axis=1).astype(object)

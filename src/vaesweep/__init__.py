"""vaesweep: reproducible experiment sweeps for variational autoencoders.

The names a user needs, loaded on first use (``import vaesweep`` stays cheap, and a results
script never loads the training stack):

- base classes of a user's own components: :class:`Likelihood`, :class:`BetaSchedule`,
  :class:`Network`;
- the model and the data: :class:`VAE` (a LightningModule built from those components) and
  :class:`VAEDataModule`;
- results and figures: :func:`load_results` (runs → one DataFrame), :func:`aggregate`
  (mean ± std over seeds) and :func:`write_sweep_figures` (the paper figures of a sweep).

Everything else is internal; the layers are described in docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_PUBLIC = {
    "Likelihood": "vaesweep.model.likelihood_base",
    "BetaSchedule": "vaesweep.model.schedules",
    "Network": "vaesweep.model.networks",
    "VAE": "vaesweep.model.module",
    "VAEDataModule": "vaesweep.data",
    "load_results": "vaesweep.analysis.results",
    "aggregate": "vaesweep.analysis.results",
    "write_sweep_figures": "vaesweep.analysis.figures",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vaesweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

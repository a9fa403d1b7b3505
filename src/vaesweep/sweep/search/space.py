"""The search space: ``hydra.sweeper.params`` and the command line's overrides → searched keys
(Optuna distributions), grid axes and fixed overrides; refusal of what is not a search
expression (:class:`SearchError`, naming the key and what is allowed)."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from omegaconf import DictConfig, ListConfig

from vaesweep.core.helpers import compared_number, quoted_value

PARAMS_KEY = "hydra.sweeper.params"
SAMPLER_KEY = "hydra.sweeper.sampler"
SYNTAX = (
    "interval(a, b), tag(log, interval(a, b)), int(interval(a, b)), "
    "tag(log, int(interval(a, b))), choice(a, b, ...), range(start, stop[, step]), "
    "a,b,... (a grid axis: one study per value) or a single fixed value"
)


class SearchError(ValueError):
    """A search refused before any trial runs; the message names the key and what is allowed."""


def override_text(value: Any) -> str:
    """A parameter's value as an override value Hydra reads back as that value: a number,
    boolean or null as :func:`render` writes it; a string bare where Hydra reads it bare as
    that string (``gaussian``), else quoted (``'1'``, ``'true'``, ``'a,b'``, ``'x=y'``)."""
    if not isinstance(value, str):
        return render(value)
    return value if _reads_back_bare(value) else quoted_value(value)


@functools.lru_cache(maxsize=4096)
def _reads_back_bare(value: str) -> bool:
    try:
        parsed = OverridesParser.create().parse_override(f"key={value}")
    except Exception:
        return False
    read = parsed.value()
    return not parsed.is_sweep_override() and isinstance(read, str) and read == value


def quote_sweeper_params(argv: list[str]) -> list[str]:
    """``hydra.sweeper.params.KEY=EXPR`` on the command line as Hydra can take it: the key
    added or replaced (``++``: the params of a preset may not have it), the expression
    quoted (Hydra refuses a sweep of its own config keys, ``Sweeping over Hydra's
    configuration is not supported``; for a search it is a plain string). A sampler's
    argument, ``hydra.sweeper.sampler.KEY=V``, is added or replaced the same way (the
    sampler's config holds only the arguments given; a wrong one is refused, naming it,
    when the search starts)."""
    parser = OverridesParser.create()
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.startswith(SAMPLER_KEY + "."):
            arg = f"++{arg}"
        elif sep and key.startswith(PARAMS_KEY + "."):
            try:
                sweep = parser.parse_override(arg).is_sweep_override()
            except Exception:  # reported (with the key) when the search starts
                sweep = value[:1] not in "'\""
            arg = f"++{key}={quoted_value(value) if sweep else value}"
        out.append(arg)
    return out


@dataclass(frozen=True)
class Param:
    """One searched key and its distribution."""

    key: str  # as in the override (may carry +)
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    # The choices that are lists or dicts, as Hydra's override text (``[128]``): Optuna's
    # categoricals hold them as that text, and a trial's override writes it bare (read back
    # as the list or dict), as Hydra's Optuna sweeper writes them.
    structured: frozenset = frozenset()

    @property
    def name(self) -> str:
        return self.key.lstrip("+")

    def text(self, value: Any) -> str:
        """A value of this key as the override value Hydra reads back as that value: a list
        or dict choice bare (``[128]``), anything else as :func:`override_text` writes it."""
        if isinstance(value, str) and value in self.structured:
            return value
        return override_text(value)

    def distribution(self) -> Any:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        """A canonical text of the distribution (stored with the study, compared on resume)."""
        if self.kind == "categorical":
            return f"choice({', '.join(render(c) for c in self.choices)})"
        text = f"{self.kind}[{self.low!r}, {self.high!r}]"
        if self.step is not None:
            text += f" step {self.step!r}"
        return text + (" log" if self.log else "")

    def example(self) -> Any:
        return self.choices[0] if self.kind == "categorical" else self.low

    def size(self) -> int | None:
        """How many distinct values a sampler can propose; None for a continuous range."""
        if self.kind == "categorical":
            # As jobs are told apart: 1 and 1.0 are one value (beta=1, beta=1.0), but a bool
            # is not the number it equals (False is not 0) and the int 1 of a batch-or-fraction
            # key is one batch, not every batch (compared_number).
            return len(
                {(type(c) is bool, repr(compared_number(self.key, c))) for c in self.choices}
            )
        if self.kind == "int":
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        if self.step is None:
            return None
        # In decimal, as Optuna trims the range to whole steps (the values as written).
        return int((_decimal(self.high) - _decimal(self.low)) // _decimal(self.step)) + 1


def render(value: Any) -> str:
    """A parameter value as an override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


@dataclass
class Space:
    """What a search command asks for: searched keys, grid axes and fixed overrides."""

    searched: dict[str, Param] = field(default_factory=dict)
    grid: dict[str, list[str]] = field(default_factory=dict)  # key → override values
    fixed: dict[str, str] = field(default_factory=dict)  # key → override line

    def points(self) -> list[list[str]]:
        """The overrides of every grid point ([[]] without grid axes)."""
        axes = [[f"{k}={v}" for v in values] for k, values in self.grid.items()]
        return [list(p) for p in itertools.product(*axes)]

    def size(self) -> int | None:
        """How many distinct points the searched keys span (per grid point); None when a
        key is continuous."""
        sizes = [p.size() for p in self.searched.values()]
        return None if None in sizes else math.prod(sizes)

    def trial_overrides(self, point: list[str], params: dict[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, its grid point's, and its searched values
        written so that Hydra reads back each one as it is (:meth:`Param.text`)."""
        return [
            *self.fixed.values(),
            *point,
            *(
                f"{self.searched[name].key}={self.searched[name].text(v)}"
                for name, v in params.items()
            ),
        ]


def _refuse(source: str, written: str, problem: str) -> SearchError:
    return SearchError(f"{source}={written}: {problem}; allowed: {SYNTAX}")


def _interval(source: str, written: str, key: str, value: IntervalSweep) -> Param:
    unknown = set(value.tags) - {"log"}
    if unknown:
        raise _refuse(source, written, f"unknown tag {sorted(unknown)} (only log)")
    low, high = value.start, value.end
    if not low < high:
        raise _refuse(source, written, f"empty or inverted range [{low}, {high}]")
    log_scale = "log" in value.tags
    if log_scale and low <= 0:
        raise _refuse(source, written, f"a log range needs a positive lower end, got {low}")
    kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    return Param(key, kind, low, high, log=log_scale)


def _decimal(number: int | float) -> Decimal:
    """The number as written: a float's shortest text (``0.3``, not its binary value)."""
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))


def range_values(value: RangeSweep) -> list[Decimal]:
    """The values of ``range(start, stop, step)`` as written, computed exactly in decimal:
    start + k·step for k = 0, 1, ... while before stop. Hydra's own list adds the step in
    binary floating point, so its last value can miss the written one
    (``range(0, 1, 0.3)`` ends at 0.8999999999999999) or come within a rounding error below
    stop and be one value too many (``range(0, 0.9, 0.3)``)."""
    count, start, step = _range_steps(value)
    return [start + k * step for k in range(count)]


def _range_steps(value: RangeSweep) -> tuple[int, Decimal, Decimal]:
    """(how many values, start, step) of ``range(start, stop, step)``, in decimal."""
    start, stop, step = (_decimal(v) for v in (value.start, value.stop, value.step))
    if step == 0:
        return 0, start, step
    return max(0, math.ceil((stop - start) / step)), start, step


#: The most values of a shuffled range() (a categorical, each value a choice Optuna keeps).
MAX_SHUFFLED = 10_000


def _range(source: str, written: str, override: Override, value: RangeSweep) -> Param:
    """A searched ``range()``: Optuna's stepped distribution over its values as written
    (:func:`range_values`), from the first to the last, so that Optuna, which trims a
    range to whole steps from its low end in decimal, keeps every one of them (Hydra's
    0.8999999999999999 as the high end of ``range(0, 1, 0.3)`` lost 0.9). Optuna proposes
    low + k·step in floating point, as Hydra's grid does: 0.9 may be proposed as
    0.8999999999999999. Shuffled, or of one value: a categorical of the values as written."""
    key = override.get_key_element()
    if value.tags:
        raise _refuse(source, written, f"unknown tag {sorted(value.tags)} on range()")
    count, start, step = _range_steps(value)
    if not count:
        raise _refuse(source, written, "empty or inverted range (no value)")
    integral = all(isinstance(v, int) for v in (value.start, value.stop, value.step))
    number = int if integral else float
    kind = "int" if integral else "float"
    if value.shuffle and count > MAX_SHUFFLED:
        raise SearchError(
            f"{source}={written}: a shuffled range is a categorical of its {count} values; "
            f"allowed: at most {MAX_SHUFFLED}, or the same range() without shuffle (a stepped "
            "distribution over the same values: their order means nothing to a search)"
        )
    if value.shuffle or count == 1:  # in the range's order, never Hydra's shuffled one
        return Param(key, "categorical", choices=tuple(map(number, range_values(value))))
    ends = (number(start), number(start + (count - 1) * step))  # the first value and the last
    return Param(key, kind, min(ends), max(ends), step=abs(value.step))


def _choice(source: str, written: str, override: Override, value: ChoiceSweep) -> Param:
    if value.tags:
        raise _refuse(source, written, f"unknown tag {sorted(value.tags)} on choice()")
    raw = list(override.sweep_iterator())
    bad = [c for c in raw if not isinstance(c, str | int | float | bool | list | dict)]
    if bad:
        raise _refuse(
            source,
            written,
            f"choices must be numbers, strings, booleans, lists or dicts, got {bad}",
        )
    # Optuna's categoricals hold numbers, strings and booleans: a list or dict as its text.
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    structured = {c for r, c in zip(raw, choices, strict=True) if isinstance(r, list | dict)}
    clash = [c for r, c in zip(raw, choices, strict=True) if c in structured and isinstance(r, str)]
    if clash:
        raise _refuse(
            source,
            written,
            f"the string {quoted_value(clash[0])} and the list or dict {clash[0]} would be one "
            "option to Optuna (which holds a list or dict as its text)",
        )
    if value.shuffle:  # Hydra's unseeded order, another at every parse: sorted (by type, value)
        choices.sort(key=lambda c: (type(c).__name__, c))
    return Param(
        override.get_key_element(),
        "categorical",
        choices=tuple(choices),
        structured=frozenset(structured),
    )


def _param(source: str, override: Override) -> Param:
    written = override.input_line.split("=", 1)[1] if override.input_line else ""
    value = override.value()
    if isinstance(value, IntervalSweep):
        return _interval(source, written, override.get_key_element(), value)
    if isinstance(value, RangeSweep):
        return _range(source, written, override, value)
    if isinstance(value, ChoiceSweep):
        return _choice(source, written, override, value)
    raise _refuse(
        source, written, f"{override.value_type.name.lower()} is not a search distribution"
    )


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": e}}`` (what ``hydra.sweeper.params.optimizer.lr=e`` makes) and
    ``{"optimizer.lr": e}`` (a preset's params) → ``{"optimizer.lr": e}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict | DictConfig):
            out.update(_flat(dict(value), f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _lines(params: dict[str, Any] | None, arguments: list[str]) -> list[tuple[str, str]]:
    """(where it was written, override line) of the params, then of the command line."""
    items: list[tuple[str, str]] = []
    for key, value in _flat(params or {}).items():
        source = f"{PARAMS_KEY}.{key}"
        if isinstance(value, list | ListConfig):
            raise SearchError(f"{source}: a list is not a search expression; allowed: {SYNTAX}")
        items.append((source, f"{key}={render(value) if not isinstance(value, str) else value}"))
    return items + [(arg.split("=", 1)[0], arg) for arg in arguments]


def _parse(parser: OverridesParser, source: str, line: str) -> Override:
    try:
        return parser.parse_override(line)
    except Exception as e:
        message = str(e).splitlines()
        detail = next((m for m in message if "while evaluating" in m or "Unknown" in m), "")
        written = line.split("=", 1)[1] if "=" in line else line
        raise _refuse(source, written, f"not a search expression ({detail.strip()})") from None


def parse_space(params: dict[str, Any] | None, arguments: list[str]) -> Space:
    """The search space of ``hydra.sweeper.params`` (first) and the command line's overrides
    (which win for the same key). Raises SearchError naming the key."""
    parser = OverridesParser.create()
    space = Space()
    for source, line in _lines(params, arguments):
        override = _parse(parser, source, line)
        name = override.get_key_element().lstrip("+")
        for table in (space.searched, space.grid, space.fixed):
            table.pop(name, None)
        value = override.value() if override.is_sweep_override() else None
        if isinstance(value, ChoiceSweep) and value.simple_form:
            space.grid[name] = list(override.sweep_string_iterator())
        elif override.is_sweep_override():
            space.searched[name] = _param(source, override)
        else:
            space.fixed[name] = override.input_line or line
    return space

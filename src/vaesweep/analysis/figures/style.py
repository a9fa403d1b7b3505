"""The one figure style: paper sizes, a colour-blind-safe palette, labels with units, saving.

Colours are the Okabe–Ito palette (distinguishable under the common colour-vision
deficiencies), one FIXED colour per likelihood in every figure; the scale mode is the line
style and marker. Figures are ``matplotlib.figure.Figure`` objects made without pyplot (no
global state, no interactive backend); they render with Agg and save as vector PDF + PNG.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

# Text widths of common two-column paper formats (NeurIPS/ICML/IEEE), inches.
ONE_COLUMN = 3.3
TWO_COLUMN = 6.9
PNG_DPI = 200

OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "black": "#000000",
}
LIKELIHOOD_COLOURS = {
    "gaussian": OKABE_ITO["blue"],
    "laplace": OKABE_ITO["vermillion"],
    "bernoulli": OKABE_ITO["bluish_green"],
    "continuous_bernoulli": OKABE_ITO["reddish_purple"],
}
# For configurations that the likelihood and scale do not tell apart (e.g. β schedules).
CYCLE = [OKABE_ITO[k] for k in ("blue", "vermillion", "bluish_green", "orange", "reddish_purple")]
CYCLE += [OKABE_ITO[k] for k in ("sky_blue", "black", "yellow")]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
SCALE_STYLES = {
    None: ("-", "o"),
    "fixed": ("-", "o"),
    "learned": ("--", "s"),
    "optimal": (":", "^"),
    "per_pixel": ("-.", "D"),
    "decoder": ((0, (5, 1, 1, 1, 1, 1)), "v"),
}
LIKELIHOOD_NAMES = {
    "gaussian": "Gaussian",
    "laplace": "Laplace",
    "bernoulli": "Bernoulli",
    "continuous_bernoulli": "cont. Bernoulli",
}
SCALE_SYMBOLS = {"gaussian": "σ", "laplace": "b"}

METRIC_LABELS = {
    "test/nll": "test NLL −log p(x) (nats)",
    "test/bpd": "test NLL (bits/dim)",
    "test/elbo": "test ELBO (nats)",
    "test/rec_nll": "distortion −E log p(x|z) (nats)",
    "test/kl": "rate KL(q‖p) (nats)",
    "test/mse": "test MSE per pixel",
    "test/mae": "test MAE per pixel",
    "test/active_units": "active units",
    "train/scale": "decoder scale σ or b (data units)",
    "beta": "β",
    "train/kl_step": "training KL (nats)",
}

RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "legend.frameon": False,
    "figure.constrained_layout.use": True,
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text, accepted by publishers
    "svg.fonttype": "none",
    "image.cmap": "gray",
}


@contextmanager
def paper_style() -> Iterator[None]:
    """The rcParams of every vaesweep figure, for the duration of the block."""
    with mpl.rc_context(RC):
        yield


def new_figure(width: float = ONE_COLUMN, height: float | None = None, **subplots) -> Figure:
    """A Figure (no pyplot) of ``width`` × ``height`` inches (height default: width / φ)."""
    fig = Figure(figsize=(width, height or width / 1.618))
    if subplots:
        fig.subplots(**subplots)
    return fig


def save(
    fig: Figure, out_dir: Path, name: str, formats: tuple[str, ...] = ("pdf", "png")
) -> list[Path]:
    """Write ``name.pdf`` (vector) and ``name.png`` (PNG_DPI) into out_dir (or only the
    ``formats`` asked for); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in formats]
    with paper_style():
        for path in paths:
            fig.savefig(path, **({"dpi": PNG_DPI} if path.suffix == ".png" else {}))
    return paths


def literal(text: object) -> str:
    """``text`` as matplotlib must be given it to draw it as written: every ``$`` escaped
    (``\\$``), so that a value from the data (``cost $5 to $6``, ``$\\lambda^2$``) is never
    read as mathtext: drawn as math, or failing to parse. For the text of titles, labels,
    legends and captions built from config values; an artist's own label stays as written."""
    return str(text).replace("$", r"\$")


def text_width(text: str, fontsize: float) -> float:
    """Width in inches of ``text`` (its longest line, as written, never as mathtext)
    drawn at ``fontsize`` points."""
    renderer = RendererAgg(1, 1, 72)  # 72 dpi: a pixel is a point
    prop = FontProperties(size=fontsize)
    widths = [
        renderer.get_text_width_height_descent(line, prop, ismath=False)[0]
        for line in text.split("\n")
    ]
    return max(widths) / 72


def sequential_colours(n: int) -> list[str]:
    """n colours of viridis (perceptually uniform, colour-blind safe), light to dark ends cut."""
    cmap = mpl.colormaps["viridis"]
    return [mpl.colors.to_hex(cmap(0.85 - 0.7 * i / max(n - 1, 1))) for i in range(n)]


def likelihood_label(likelihood: str | None, scale: str | None) -> str:
    """ "Gaussian, σ learned", "Laplace, b optimal", "Bernoulli"."""
    name = LIKELIHOOD_NAMES.get(likelihood, str(likelihood))
    if scale is None or likelihood not in SCALE_SYMBOLS:
        return name
    return f"{name}, {SCALE_SYMBOLS[likelihood]} {scale.replace('_', ' ')}"


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def compact(value: object, digits: int = 4) -> str:
    """A value as a label shows it: floats to ``digits`` significant digits (0.06838), a
    float that is a whole number as an int (5.0 → 5: an int column that passed through
    NaN), everything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}"


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each key as a label names it: its last dotted part (``optimizer.lr`` → ``lr``) unless
    another of ``keys`` ends the same way, then the whole key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


@dataclass(frozen=True)
class LineStyle:
    """How one configuration is drawn in every figure: colour, line style, marker, label."""

    colour: str
    linestyle: object
    marker: str
    label: str

    def kwargs(self) -> dict:
        return {"color": self.colour, "linestyle": self.linestyle, "marker": self.marker}


def line_styles(
    configs: Sequence[tuple], keys: Sequence[str], likelihoods: Sequence[str], scales: Sequence
) -> dict[tuple, LineStyle]:
    """A style per configuration (a tuple of values of ``keys``).

    likelihoods / scales: each configuration's ``config.likelihood.name`` and
    ``config.likelihood.scale`` (None or NaN when the likelihood has none). Colour = the
    likelihood's fixed colour, line style and marker = the scale mode; when that does not
    tell the configurations apart (e.g. only the β schedule varies), colours and markers
    cycle over the configurations instead. Labels name the likelihood and scale when they
    vary (or when nothing else does), then every other varying key as ``key=value`` with
    :func:`short_names` and :func:`compact` values (more digits only where 4 significant
    digits would give two configurations one label).
    """
    scales = [None if _is_missing(s) else s for s in scales]
    pairs = list(zip(likelihoods, scales, strict=True))
    others = [k not in ("likelihood", "likelihood.scale") for k in keys]
    name_them = len(set(pairs)) > 1 or not any(others)
    names = short_names([k for k, other in zip(keys, others, strict=True) if other])

    def labels(digits: int) -> list[str]:
        out = []
        for config, pair in zip(configs, pairs, strict=True):
            parts = [likelihood_label(*pair)] if name_them else []
            parts += [  # an explicit null is a setting, as any other value
                f"{names[k]}={'null' if _is_missing(v) else compact(v, digits)}"
                for k, v, other in zip(keys, config, others, strict=True)
                if other
            ]
            out.append("; ".join(parts))
        return out

    shown = labels(4)
    if len(set(shown)) < len(set(labels(17))):  # 4 digits would merge configurations
        shown = labels(17)
    styles = {}
    for config, (lik, scale), label in zip(configs, pairs, shown, strict=True):
        linestyle, marker = SCALE_STYLES.get(scale, SCALE_STYLES[None])
        colour = LIKELIHOOD_COLOURS.get(lik, OKABE_ITO["black"])
        styles[config] = LineStyle(colour, linestyle, marker, label)
    drawn = {(s.colour, str(s.linestyle), s.marker) for s in styles.values()}
    if len(drawn) < len(styles):
        styles = {
            config: LineStyle(
                CYCLE[i % len(CYCLE)],
                LINESTYLES[(i // len(CYCLE)) % len(LINESTYLES)],
                MARKERS[i % len(MARKERS)],
                s.label,
            )
            for i, (config, s) in enumerate(styles.items())
        }
    return styles

"""Analytic figures of the reconstruction losses, with the exact constants (docs/math.md §2).

Per data dimension, the Gaussian NLL at residual r = x − μ and scale σ is
``½ log 2π + log σ + r²/(2σ²)`` nats; at a fixed squared error K = r² (or K = MSE over
pixels) it is minimised at σ* = √K, where it equals ½ (1 + log 2πK). With σ* plugged in, the
NLL of an image is (D/2) log MSE + const: a log-MSE loss. The gradient of log MSE with respect
to one output x_i is 2 (x_i − y_i)/SSE = 2r/(r² + δ), δ the squared error of the other pixels:
it grows as the remaining error δ shrinks, unlike the squared error's 2r.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from vaesweep.analysis.figures.style import (
    LIKELIHOOD_COLOURS,
    OKABE_ITO,
    ONE_COLUMN,
    TWO_COLUMN,
    new_figure,
    paper_style,
)

SIGMA_STAR_GID = "sigma_star"  # the vertical line marking σ*, for readers of the Figure


def scientific(x: float) -> str:
    """1e-10 → "10⁻¹⁰" style mathtext for small or large numbers, "0.0224" otherwise."""
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.3g}".replace("-", "−")
    mantissa, exponent = f"{x:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    power = f"10^{{{int(exponent)}}}"
    return f"${power}$" if mantissa == "1" else rf"${mantissa}\times {power}$"


def gaussian_nll(sigma: np.ndarray, squared_error: float) -> np.ndarray:
    """−log N(x; μ, σ) per dimension for (x − μ)² = squared_error, nats, shape of sigma."""
    return 0.5 * math.log(2 * math.pi) + np.log(sigma) + squared_error / (2 * sigma**2)


def optimal_sigma(squared_error: float) -> float:
    """σ* = √K, the minimiser of :func:`gaussian_nll` over σ (∂/∂σ: 1/σ − K/σ³ = 0)."""
    return math.sqrt(squared_error)


def nll_versus_sigma(
    squared_errors: Sequence[float] = (5e-4, 1e-10), width: float = TWO_COLUMN
) -> Figure:
    """Gaussian NLL per dimension versus σ (log axis) at fixed squared errors K, one panel
    each, σ* = √K marked by a vertical line (gid ``sigma_star``) and the minimum value."""
    with paper_style():
        fig = new_figure(width, 2.3, ncols=len(squared_errors))
        for ax, k in zip(fig.axes, squared_errors, strict=True):
            star = optimal_sigma(k)
            sigma = np.logspace(math.log10(star) - 2, 0, 600)
            nll = gaussian_nll(sigma, k)
            low = gaussian_nll(np.array([star]), k)[0]
            ax.plot(sigma, nll, color=LIKELIHOOD_COLOURS["gaussian"], label="NLL")
            ax.axvline(star, color=OKABE_ITO["orange"], linestyle="--", gid=SIGMA_STAR_GID)
            ax.plot([star], [low], "o", color=OKABE_ITO["orange"], markersize=4)
            ax.annotate(
                f"σ* = √K = {scientific(star)}\nNLL = {low:.2f} nats".replace("-", "−"),
                (star, low),
                xytext=(1.5 * star, low + 10),  # right of σ*, above the curve
                textcoords="data",
                va="bottom",
                arrowprops={"arrowstyle": "->", "color": "grey", "linewidth": 0.6},
            )
            ax.set_xscale("log")
            ax.set_ylim(low - 2, low + 15)
            ax.set_xlabel("σ (data units)")
            ax.set_ylabel("−log N(x; μ, σ) (nats/dim)")
            ax.set_title(f"K = (x − μ)² = {scientific(k)}", loc="left")
    return fig


def log_mse_gradient(
    deltas: Sequence[float] = (0.05, 0.1, 0.5), width: float = ONE_COLUMN
) -> Figure:
    """Squared gradient of log((x−y)² + δ) (= log MSE up to a constant, δ the squared error
    of all other pixels) versus the residual x − y, against that of the squared error (x−y)²."""
    r = np.linspace(-1, 1, 801)
    colours = [OKABE_ITO[c] for c in ("blue", "bluish_green", "reddish_purple")]
    with paper_style():
        fig = new_figure(width, 2.8, ncols=1)
        ax = fig.axes[0]
        for delta, colour in zip(deltas, colours, strict=False):
            ax.plot(r, (2 * r / (r**2 + delta)) ** 2, color=colour, label=f"log MSE, δ = {delta:g}")
        ax.plot(r, (2 * r) ** 2, color="black", linestyle=":", label="squared error (x − y)²")
        ax.set_ylim(0, 1.1 / min(deltas))
        ax.set_xlabel("residual x − y")
        ax.set_ylabel("(∂ loss / ∂x)²")
        fig.legend(loc="outside lower center", ncol=2)
    return fig


def log_squared_error_gradient(width: float = ONE_COLUMN) -> Figure:
    """Squared gradient of log (x − y)² = (2 / (x − y))², which explodes as x → y (log axis)."""
    x = np.linspace(-1, 3, 800)  # y = 1; 800 points never hit x = 1 exactly
    with paper_style():
        fig = new_figure(width, 2.2, ncols=1)
        ax = fig.axes[0]
        ax.plot(x, (2 / (x - 1)) ** 2, color=LIKELIHOOD_COLOURS["gaussian"])
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("x (target y = 1)")
        ax.set_ylabel("(∂ log (x − y)² / ∂x)²")
        ax.set_title("log squared error: gradient explodes at x = y", loc="left")
    return fig


def l1_versus_l2_gradient(width: float = ONE_COLUMN) -> Figure:
    """|∂/∂r| of the L1 loss |r| (= 1, undefined at 0) and of the L2 loss r² (= 2|r|)."""
    r = np.linspace(-2, 2, 401)
    positive = r[r > 0]
    with paper_style():
        fig = new_figure(width, 2.2, ncols=1)
        ax = fig.axes[0]
        l1 = LIKELIHOOD_COLOURS["laplace"]
        ax.plot(r[r < 0], np.ones((r < 0).sum()), color=l1, label="L1 |r| (Laplace, b = 1)")
        ax.plot(positive, np.ones_like(positive), color=l1)
        ax.plot([0], [1], "o", markerfacecolor="white", color=l1)
        ax.plot(
            r,
            2 * np.abs(r),
            color=LIKELIHOOD_COLOURS["gaussian"],
            linestyle="--",
            label="L2 r² (Gaussian, σ² = ½)",
        )
        ax.set_xlabel("residual r = x − y")
        ax.set_ylabel("|∂ loss / ∂r|")
        ax.legend(loc="upper center")
    return fig


ANALYTIC_FIGURES = {
    "gaussian_nll_vs_sigma": nll_versus_sigma,
    "log_mse_gradient": log_mse_gradient,
    "log_squared_error_gradient": log_squared_error_gradient,
    "l1_vs_l2_gradient": l1_versus_l2_gradient,
}

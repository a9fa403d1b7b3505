"""Paper figures: every figure command on a real tiny sweep, the analytic figures against
independent references (scipy, finite differences), skips with the missing metric named."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import optimize, stats

from vaesweep.analysis.figures import FigureSkipped, write_sweep_figures
from vaesweep.analysis.figures.analytic import (
    SIGMA_STAR_GID,
    l1_versus_l2_gradient,
    log_mse_gradient,
    log_squared_error_gradient,
    nll_versus_sigma,
)
from vaesweep.analysis.figures.grids import reconstruction_rows
from vaesweep.analysis.figures.style import LIKELIHOOD_COLOURS, OKABE_ITO
from vaesweep.analysis.figures.sweep import (
    metric_vs_beta,
    rate_distortion,
    scale_history,
    schedule_history,
)
from vaesweep.analysis.figures.table import results_table
from vaesweep.analysis.results import load_results

from tiny_sweeps import copy_results, vaesweep

SWEEP_FIGURES = [
    "nll_elbo_vs_beta",
    "bpd_vs_beta",
    "rate_distortion",
    "scale_history",
    "reconstructions_beta0.5",
    "reconstructions_beta2",
    "samples_beta0.5",
    "samples_beta2",
]
ANALYTIC_FIGURES = [
    "gaussian_nll_vs_sigma",
    "log_mse_gradient",
    "log_squared_error_gradient",
    "l1_vs_l2_gradient",
]


def check_pdf_and_png(out: Path, name: str) -> None:
    pdf, png = out / f"{name}.pdf", out / f"{name}.png"
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, name
    with Image.open(png) as im:
        assert im.format == "PNG" and min(im.size) > 100, name


@pytest.mark.slow
def test_figures_command_writes_every_sweep_figure(sweep, tmp_path):
    out = tmp_path / "figures"
    proc = vaesweep(["figures", str(sweep), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in SWEEP_FIGURES:
        check_pdf_and_png(out, name)
    table = (out / "results_table.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + 8  # header, rows
    assert r"\toprule" in (out / "results_table.tex").read_text()
    assert "skipped schedule_history: every run uses the constant β schedule" in proc.stderr
    written = {Path(line).name for line in proc.stdout.split()}
    assert written == {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]  # no temp dir left


@pytest.mark.slow
def test_schedule_history_of_the_beta_schedules_study(schedules):
    df = load_results(schedules)
    fig = schedule_history(df)
    beta_axis = fig.axes[0]
    labels = [line.get_label() for line in beta_axis.get_lines()]
    assert labels == [
        f"beta_schedule={s}" for s in ("capacity", "constant", "cyclical", "linear", "pi")
    ]
    # Independent: the logged β of the constant-schedule run is β = 1 at every step.
    constant = beta_axis.get_lines()[1]
    np.testing.assert_allclose(constant.get_ydata(), 1.0)
    assert len(constant.get_xdata()) == 3  # 3 training steps, logged every step
    with pytest.raises(FigureSkipped, match="beta is not swept"):
        metric_vs_beta(df)


@pytest.mark.slow
def test_analytic_figures_command(tmp_path):
    proc = vaesweep(["figures", "--analytic", "--out", str(tmp_path / "a")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ANALYTIC_FIGURES:
        check_pdf_and_png(tmp_path / "a", name)


@pytest.mark.parametrize("k", [5e-4, 1e-10])
def test_marked_sigma_star_is_the_minimiser_sqrt_k(k):
    fig = nll_versus_sigma((k,))
    (ax,) = fig.axes
    (marker,) = [line for line in ax.get_lines() if line.get_gid() == SIGMA_STAR_GID]
    marked = float(marker.get_xdata()[0])
    assert marked == pytest.approx(math.sqrt(k), rel=1e-6)

    # Independent: minimise scipy's Gaussian NLL numerically, over log σ.
    def nll(log_sigma: float) -> float:
        return -stats.norm.logpdf(math.sqrt(k), loc=0.0, scale=math.exp(log_sigma))

    centre = math.log(math.sqrt(k))
    found = optimize.minimize_scalar(
        nll, bounds=(centre - 5, centre + 5), method="bounded", options={"xatol": 1e-12}
    )
    assert math.exp(found.x) == pytest.approx(marked, rel=1e-6)
    # The plotted curve is the exact NLL with its constants.
    curve = ax.get_lines()[0]
    sigma, shown = curve.get_xdata(), curve.get_ydata()
    expected = -stats.norm.logpdf(math.sqrt(k), loc=0.0, scale=sigma)
    np.testing.assert_allclose(shown, expected, rtol=1e-10)
    assert found.fun == pytest.approx(0.5 * (1 + math.log(2 * math.pi * k)), rel=1e-9)


def finite_difference(loss, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    return (loss(x + h) - loss(x - h)) / (2 * h)


def test_gradient_figures_match_finite_differences():
    fig = log_mse_gradient((0.05, 0.1, 0.5))
    lines = fig.axes[0].get_lines()
    for line, delta in zip(lines[:3], (0.05, 0.1, 0.5), strict=True):
        r = line.get_xdata()
        grad = finite_difference(lambda t, d=delta: np.log(t**2 + d), r)
        np.testing.assert_allclose(line.get_ydata(), grad**2, rtol=1e-5, atol=1e-8)
    mse = lines[3]
    grad = finite_difference(lambda t: t**2, mse.get_xdata())
    np.testing.assert_allclose(mse.get_ydata(), grad**2, rtol=1e-5, atol=1e-8)

    line = log_squared_error_gradient().axes[0].get_lines()[0]
    x = line.get_xdata()
    grad = finite_difference(lambda t: np.log((t - 1) ** 2), x, h=1e-8)
    np.testing.assert_allclose(line.get_ydata(), grad**2, rtol=1e-4)

    lines = l1_versus_l2_gradient().axes[0].get_lines()
    for line in (lines[0], lines[1]):  # the L1 branches, r < 0 and r > 0
        np.testing.assert_allclose(
            line.get_ydata(), np.abs(finite_difference(np.abs, line.get_xdata())), rtol=1e-6
        )
    l2 = lines[3]
    np.testing.assert_allclose(
        l2.get_ydata(), np.abs(finite_difference(np.square, l2.get_xdata())), rtol=1e-6, atol=1e-8
    )


def test_missing_metric_skips_the_figure_naming_the_metric(sweep, tmp_path):
    df = load_results(sweep).drop(columns=["test/kl"])
    with pytest.raises(FigureSkipped, match="metric 'test/kl' is missing"):
        rate_distortion(df)
    # End to end: results whose metrics lack test/kl; the other figures are still drawn.
    for path in copy_results(sweep, tmp_path / "runs"):
        result = json.loads(path.read_text())
        del result["metrics"]["test/kl"]
        path.write_text(json.dumps(result))
    report = write_sweep_figures(load_results(tmp_path / "runs"), tmp_path / "out")
    assert "rate_distortion: metric 'test/kl' is missing from the results" in report.skipped
    assert not list((tmp_path / "out").glob("rate_distortion.*"))
    check_pdf_and_png(tmp_path / "out", "nll_elbo_vs_beta")
    # Only results.json were copied: no images.npz and no metrics.csv, and the skips say so.
    skipped = "\n".join(report.skipped)
    assert "reconstructions_beta0.5: no completed run has its images.npz" in skipped
    assert "scale_history: metric 'train/scale' is missing from every run's metrics.csv" in skipped


@pytest.mark.slow
def test_figures_are_written_all_or_nothing(sweep, tmp_path, monkeypatch):
    df = load_results(sweep)
    broken = tmp_path / "broken"  # a run whose images.npz cannot be read: named, not fatal
    broken.mkdir()
    (broken / "images.npz").write_bytes(b"not an npz file")
    (broken / "results.json").write_text((Path(df.loc[0, "run_dir"]) / "results.json").read_text())
    df.loc[0, "run_dir"] = str(broken)
    report = write_sweep_figures(df, tmp_path / "ok")
    assert any(f"{broken}/images.npz cannot be read" in note for note in report.notes)
    check_pdf_and_png(tmp_path / "ok", "reconstructions_beta0.5")
    # An error while drawing: no partial set of figures is left behind.
    import vaesweep.analysis.figures as figures

    def fails(df):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(figures, "results_table", fails)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_sweep_figures(df, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "ok"]


def test_colours_are_fixed_per_likelihood_and_styles_per_scale(sweep):
    fig = metric_vs_beta(load_results(sweep))
    seen = {}
    for container in fig.axes[0].containers:
        line = container.lines[0]
        seen[container.get_label()] = (line.get_color(), line.get_linestyle(), line.get_marker())
    assert (
        seen["Gaussian, σ fixed"][0]
        == seen["Gaussian, σ optimal"][0]
        == LIKELIHOOD_COLOURS["gaussian"]
    )
    assert (
        seen["Laplace, b fixed"][0]
        == seen["Laplace, b optimal"][0]
        == LIKELIHOOD_COLOURS["laplace"]
    )
    assert seen["Gaussian, σ fixed"][1:] == seen["Laplace, b fixed"][1:]
    assert seen["Gaussian, σ fixed"][1:] != seen["Gaussian, σ optimal"][1:]
    assert set(LIKELIHOOD_COLOURS.values()) <= set(OKABE_ITO.values())
    assert fig.axes[0].get_xscale() == "log" and "nats" in fig.axes[0].get_ylabel()


def test_scale_history_comes_from_metrics_csv(sweep):
    df = load_results(sweep)
    fig = scale_history(df)
    assert [ax.get_title(loc="left") for ax in fig.axes] == [
        "Gaussian: scale σ",
        "Laplace: scale b",
    ]
    line = fig.axes[0].get_lines()[0]
    # Independent: the mean over seeds of train/scale at each step of the matching runs.
    runs = df[
        (df["likelihood"] == "gaussian")
        & (df["likelihood.scale"] == "optimal")
        & (df["beta"] == 0.5)
    ]
    per_step = {}
    for run_dir in runs["run_dir"]:
        rows = [r.split(",") for r in (Path(run_dir) / "metrics.csv").read_text().splitlines()]
        head = rows[0]
        for r in rows[1:]:
            if r[head.index("train/scale")]:
                per_step.setdefault(int(r[head.index("step")]), []).append(
                    float(r[head.index("train/scale")])
                )
    assert list(line.get_xdata()) == sorted(per_step)
    np.testing.assert_allclose(line.get_ydata(), [np.mean(per_step[s]) for s in sorted(per_step)])


def test_reconstructions_are_the_runs_own_on_the_same_test_images(sweep):
    """Each row equals the reconstruction grid the run itself wrote at test time."""
    df = load_results(sweep)
    rows = reconstruction_rows(df, beta=0.5)
    assert [label for label, _ in rows] == [
        "test images",
        "Gaussian, σ fixed",
        "Gaussian, σ optimal",
        "Laplace, b fixed",
        "Laplace, b optimal",
    ]
    originals = rows[0][1]
    for (label, images), (_, run) in zip(
        rows[1:], df[(df["beta"] == 0.5) & (df["seed"] == 0)].iterrows(), strict=True
    ):
        with Image.open(Path(run["run_dir"]) / "reconstructions.png") as im:
            grid = np.asarray(im, dtype=float) / 255.0
        n, (h, w), pad = 8, images.shape[-2:], 2
        up = grid.shape[1] // (n * (w + pad) + pad)
        grid = grid[::up, ::up]
        for j in range(n):
            left = pad + j * (w + pad)
            top_x, top_rec = pad, pad + (h + pad)
            # Top row of the run's grid: its dequantised input, within 1/256 of the grey level.
            np.testing.assert_allclose(
                grid[top_x : top_x + h, left : left + w], originals[j, 0], atol=2 / 255
            )
            expected = images[j, 0].clamp(0, 1).numpy()
            np.testing.assert_allclose(
                grid[top_rec : top_rec + h, left : left + w],
                expected,
                atol=1 / 255 + 1e-6,
                err_msg=label,
            )


def test_images_file_is_the_checkpointed_models_output_on_the_first_test_images(sweep):
    """What figures compose (images.npz) against an independent path: the run's checkpoint
    rebuilt here, applied to the first test images preprocessed as in the run."""
    import torch

    from vaesweep.data import fixed_preprocess, load_dataset
    from vaesweep.model.module import VAE
    from vaesweep.run.callbacks import SAMPLE_SEED

    df = load_results(sweep)
    for _, run in df[df["seed"] == 0].head(4).iterrows():
        run_dir = Path(run["run_dir"])
        record = json.loads((run_dir / "results.json").read_text())
        with np.load(run_dir / "images.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        n = arrays["originals"].shape[0]
        test = load_dataset("digits").splits["test"]
        np.testing.assert_array_equal(arrays["originals"], test[:n].numpy())
        x = fixed_preprocess(test, record["dataset"]["preprocess"], "test")[:n]
        tested = record["config"]["eval"]["checkpoint"]  # the weights the run was tested with
        model = VAE.load_from_checkpoint(run_dir / "checkpoints" / f"{tested}.ckpt").eval()
        with torch.no_grad():
            np.testing.assert_allclose(
                arrays["reconstructions"], model.reconstruct(x).numpy(), rtol=1e-5, atol=1e-6
            )
            samples = model.sample_prior(
                arrays["samples"].shape[0], torch.Generator().manual_seed(SAMPLE_SEED)
            )
        np.testing.assert_allclose(arrays["samples"], samples.numpy(), rtol=1e-5, atol=1e-6)


def test_table_bolds_the_best_mean_of_each_column(sweep):
    df = load_results(sweep)
    table = results_table(df)
    means = {}
    for path in sweep.rglob("results.json"):
        r = json.loads(path.read_text())
        key = (
            r["config"]["likelihood"]["name"],
            r["config"]["likelihood"]["scale"],
            r["config"]["beta"],
        )
        means.setdefault(key, []).append(r["metrics"])
    ordered = sorted(means)
    for metric, pick in (
        ("test/nll", np.argmin),
        ("test/elbo", np.argmax),
        ("test/mse", np.argmin),
    ):
        column = table.columns.index(metric)
        values = [np.mean([m[metric] for m in means[k]]) for k in ordered]
        # Bold: the best mean, and every row that prints the same mean (to its digits).
        shown = [row[column].split(" ± ")[0] for row in table.rows]
        best = int(pick(values))
        assert [row[column] for row in table.best] == [s == shown[best] for s in shown]
    kl = table.columns.index("test/kl")
    assert not any(row[kl] for row in table.best)  # the rate has no better direction
    latex = table.to_latex()
    assert latex.count(r"\textbf{") == sum(map(sum, table.best)) and r"$\pm$" in latex
    assert r"$\beta$" in latex and "NLL (nats) $\\downarrow$" in latex


def _many_configurations(df, n_lr: int):
    """The sweep's runs at β = 0.5 repeated under ``n_lr`` learning rates, each copy its own
    configurations as in a search: full-precision floats, and an int that came through a
    column with NaN as a float (limit_train_batches 5.0 / 3.0)."""
    import pandas as pd

    runs = df[df["beta"] == 0.5]
    copies = [
        runs.assign(
            **{
                "optimizer.lr": 0.06837794722369642 * 1.5**i,
                "trainer.limit_train_batches": 5.0 if i % 2 == 0 else 3.0,
            }
        )
        for i in range(n_lr)
    ]
    out = pd.concat(copies, ignore_index=True)
    out.attrs = {
        **df.attrs,
        "swept": [*df.attrs["swept"], "optimizer.lr", "trainer.limit_train_batches"],
    }
    return out


@pytest.mark.slow
def test_image_grids_of_a_search_are_labelled_compactly_and_stay_readable(sweep, tmp_path):
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vaesweep.analysis.figures.captions import caption
    from vaesweep.analysis.figures.grids import (
        LABEL_CHARS,
        MAX_ROWS,
        prior_samples,
        reconstructions,
    )
    from vaesweep.analysis.figures.style import save

    df = load_results(sweep)
    few, many = _many_configurations(df, 2), _many_configurations(df, 8)  # 8 and 32 configs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small, big = reconstructions(few, 0.5), reconstructions(many, 0.5)
        samples = prior_samples(many, 0.5)
        for name, fig in (("small", small), ("big", big), ("samples", samples)):
            save(fig, tmp_path, name)  # PDF then PNG: the second save once laid it out again
    assert [str(w.message) for w in caught] == []  # e.g. "constrained_layout not applied"
    labels = [ax.get_ylabel() for ax in small.axes]
    assert labels[0] == "test images" and len(labels) == 1 + 8
    # Compact values (4 significant digits; 5.0 as 5), short keys, wrapped between parts.
    assert labels[1] == "Gaussian, σ fixed; lr=0.06838\nlimit_train_batches=5"
    assert labels[2] == "Gaussian, σ fixed; lr=0.1026\nlimit_train_batches=3"
    shown = "\n".join(labels + [ax.get_ylabel() for ax in big.axes])
    assert "0.0683779" not in shown and "=5.0" not in shown and "optimizer." not in shown
    assert all(len(line) <= LABEL_CHARS for line in shown.split("\n"))
    # 32 configurations: 24 rows drawn (and the test images), the others counted.
    assert len(big.axes) == 1 + MAX_ROWS and len(samples.axes) == MAX_ROWS
    assert "8 of 32 configurations not shown" in caption(big)
    assert "8 of 32 configurations not shown" in caption(samples)
    assert "Setting: digits, 1 epoch of 3 batches" in caption(small)
    # The figure grows with its rows; every strip keeps one readable height.
    (_, h_small), (_, h_big) = small.get_size_inches(), big.get_size_inches()
    assert h_big > h_small + (MAX_ROWS - 8) * 0.4
    heights = {round(ax.get_position().height * fig.get_size_inches()[1], 6)
               for fig in (small, big) for ax in fig.axes}  # fmt: skip
    assert len(heights) == 1 and heights.pop() >= 0.4
    # Every label lies inside the figure, left of its strip of images.
    renderer = FigureCanvasAgg(big).get_renderer()
    big.draw(renderer)
    for ax in big.axes:
        label = ax.yaxis.label.get_window_extent(renderer)
        assert label.x0 >= 0 and label.x1 <= ax.get_window_extent(renderer).x0


def test_table_and_figures_say_what_they_come_from(sweep, tmp_path):
    """A sweep with likelihood.scale=optimal set, not swept: the table and the figures name
    the dataset, the epochs, the fixed settings, and what ± / the error bars are over."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vaesweep.analysis.figures.captions import CAPTION_GID, caption

    for path in sorted(sweep.rglob("results.json")):
        record = json.loads(path.read_text())
        if record["config"]["likelihood"]["scale"] == "optimal":
            target = tmp_path / "optimal" / path.relative_to(sweep)
            target.parent.mkdir(parents=True)
            target.write_text(path.read_text())
    config = record["config"]
    df = load_results(tmp_path / "optimal")
    assert "likelihood.scale" not in df.attrs["swept"]  # set, not swept
    report = write_sweep_figures(df, tmp_path / "out")
    assert "nll_elbo_vs_beta" not in "\n".join(report.skipped)
    md = (tmp_path / "out" / "results_table.md").read_text()
    assert {line.split(" | ")[0] for line in md.splitlines()[2:6]} == {"| Gaussian", "| Laplace"}
    fixed = (
        f"model={config['model']['name']}, latent_dim={config['model']['latent_dim']}, "
        f"batch_size={config['data']['batch_size']}, lr={config['optimizer']['lr']:g}, "
        "scale=optimal."
    )
    setting = f"Setting: digits, 1 epoch of 3 batches; {fixed}"
    assert setting in md and "Mean ± std (ddof = 1) over 2 seeds" in md
    tex = (tmp_path / "out" / "results_table.tex").read_text()
    assert f"% {setting}" in tex and "over 2 seeds" in tex
    # The aggregate figures: the same setting, and what their error bars / lines are.
    fig = metric_vs_beta(df)
    assert setting in caption(fig)
    assert "error bars ±1 std (ddof = 1) over 2 seeds" in caption(fig)
    assert "±1 standard error of the mean (std/√n) over 2 seeds" in caption(
        metric_vs_beta(df, error="sem")
    )
    assert "Lines: means over 2 seeds" in caption(rate_distortion(df))
    # The caption sits under the legend and the panels, inside the figure.
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    (text,) = [t for t in fig.texts if t.get_gid() == CAPTION_GID]
    below = text.get_window_extent(renderer)
    assert below.y0 >= 0 and below.y1 < fig.legends[0].get_window_extent(renderer).y0
    assert below.y1 < min(ax.get_tightbbox(renderer).y0 for ax in fig.axes)
    # Epochs that differ between the runs are not given one number.
    varied = df.copy()
    varied.loc[0, "config.trainer.max_epochs"] = 2
    assert "epochs as configured (trainer.max_epochs varies)" in results_table(varied).notes[0]


def _hand_frame(values: dict[float, list[float]], **columns) -> pd.DataFrame:
    """A frame as load_results gives it, built by hand: one completed run per value of
    ``values[β]`` (seeds 0, 1, ...), ``test/nll`` that value and ``test/kl`` 1.0, with the
    extra ``columns`` (one value for every run)."""
    rows = [
        {
            "run_dir": f"beta={beta},seed={seed}",
            "status": "completed",
            "seed": seed,
            "dataset": "digits",
            "beta": beta,
            "test/nll": value,
            "test/kl": 1.0,
            **columns,
        }
        for beta, nlls in values.items()
        for seed, value in enumerate(nlls)
    ]
    df = pd.DataFrame(rows)
    df.attrs = {"swept": ["beta", "seed"], "metrics": ["test/nll", "test/kl"], "notes": []}
    return df


@pytest.mark.parametrize(
    ("limit", "said"),
    [
        (1, "Setting: digits, 2 epochs of 1 batch."),  # an int: one batch per epoch
        (5, "Setting: digits, 2 epochs of 5 batches."),
        (1.0, "Setting: digits, 2 epochs."),  # a float: the whole training set
        (0.25, "Setting: digits, 2 epochs of 25% of the training batches."),
        (3.0, "Setting: digits, 2 epochs of 3 batches."),  # an int through a column with NaN
    ],
)
def test_limit_train_batches_is_a_count_as_an_int_and_a_fraction_as_a_float(limit, said):
    """Lightning's convention: trainer.limit_train_batches=1 is one batch per epoch, 1.0 the
    whole training set."""
    from vaesweep.analysis.figures.captions import setting

    df = _hand_frame(
        {1.0: [5.0, 6.0]},
        **{"config.trainer.max_epochs": 2, "config.trainer.limit_train_batches": limit},
    )
    assert setting(df) == said


def test_infinite_values_are_missing_in_the_table_and_never_bold():
    """A seed's ±inf (a W&B summary, a foreign results.json) counts nowhere: the mean and
    std are those of the finite values, and a row whose only value is −inf is "–", never
    the best."""
    inf = math.inf
    df = _hand_frame({0.5: [-inf], 1.0: [10.0, 14.0], 2.0: [12.0, 13.0, inf]})
    table = results_table(df)
    nll = table.columns.index("test/nll")
    assert [row[nll] for row in table.rows] == ["–", "12.00 ± 2.83", "12.50 ± 0.71"]
    assert [row[nll] for row in table.best] == [False, True, False]
    assert "inf" not in table.to_markdown() and "nan" not in table.to_markdown()


def test_cells_over_fewer_seeds_than_the_others_are_marked():
    """β = 1 has 2 of the 3 seeds (one failed: not in the frame's completed runs) and the
    lowest mean NLL: bold, and marked in Markdown and LaTeX with a note saying over how
    many seeds; β = 4 has one seed, with a mark of its own. Equal counts: no mark, no note."""
    df = _hand_frame({1.0: [5.0, 7.0, 1.0], 2.0: [20.0, 22.0, 24.0], 4.0: [30.0]})
    failed = (df["beta"] == 1.0) & (df["seed"] == 2)
    df.loc[failed, ["status", "test/nll", "test/kl"]] = ["failed", float("nan"), float("nan")]
    table = results_table(df)
    md = table.to_markdown()
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert rows == [
        "| 1 | **6.00 ± 1.41**† | 1.00 ± 0.00† |",
        "| 2 | 22.00 ± 2.00 | 1.00 ± 0.00 |",
        "| 4 | 30.00‡ | 1.00‡ |",
    ]
    note = (  # β = 4 ran one seed, all completed: no run of its row failed
        "† over 2 of 3 seeds (the row's other runs did not complete); ‡ over 1 of 3 seeds "
        "(the row has fewer seeds than the others)."
    )
    assert note in table.notes and note in md
    latex = table.to_latex()
    assert r"1 & \textbf{6.00 $\pm$ 1.41}$^{\dagger}$ & 1.00 $\pm$ 0.00$^{\dagger}$ \\" in latex
    assert r"4 & 30.00$^{\ddagger}$ & 1.00$^{\ddagger}$ \\" in latex
    assert f"% {note}" in latex

    same = results_table(df[df["beta"] == 2.0].copy())
    assert "†" not in same.to_markdown() and "dagger" not in same.to_latex()
    assert [n for n in same.notes if "seeds (fewer" in n] == []


SCHEDULES = {
    "constant": {"_target_": "vaesweep.model.schedules.ConstantBeta", "beta": 1.0},
    "linear": {"_target_": "vaesweep.model.schedules.LinearWarmup", "beta": 1.0, "steps": 300},
    "pi": {"_target_": "vaesweep.model.schedules.PIController", "beta_max": 1.0},
    "capacity": {"_target_": "vaesweep.model.schedules.CapacityAnnealing", "gamma": 1000.0,
                 "c_max": 25.0, "c_steps": 500},
    "geco": {"_target_": "vaesweep.model.schedules.GECO", "target": -1500.0, "alpha": 0.99,
             "lambda_init": 1.0},
}  # fmt: skip


def _schedule_frame(*names: str) -> pd.DataFrame:
    """Two seeds of each β schedule in ``names``, every run with β = 1 in its config (the
    default, which capacity and geco do not read)."""
    parts = []
    for name in names:
        options = {"name": name, **SCHEDULES[name]}
        columns = {f"config.beta_schedule.{k}": v for k, v in options.items()}
        part = _hand_frame({1.0: [5.0, 6.0]}, **{"config.beta": 1.0, **columns})
        parts.append(part.assign(run_dir=part["run_dir"] + f",{name}"))
    df = pd.concat(parts, ignore_index=True)
    df.attrs = {"swept": ["seed"], "metrics": ["test/nll", "test/kl"], "notes": []}
    if len(names) > 1:
        df["beta_schedule"] = df["config.beta_schedule.name"]
        df.attrs["swept"] = ["beta_schedule", "seed"]
    return df


@pytest.mark.parametrize(
    ("schedule", "said"),
    [
        ("constant", "Setting: digits; β=1."),
        ("linear", "Setting: digits; β=1, β schedule=linear."),
        ("pi", "Setting: digits; β=1, β schedule=pi."),  # β is its upper bound
        # β is not read: the schedule's own weights instead, never "β=1".
        ("capacity", "Setting: digits; β schedule=capacity (gamma=1000, c_max=25)."),
        ("geco", "Setting: digits; β schedule=geco (target=-1500, lambda_init=1)."),
    ],
)
def test_the_setting_gives_beta_only_for_a_schedule_that_reads_it(schedule, said):
    """capacity's weight is gamma and geco's β is set by its controller: a run of either
    records the default β = 1, which it never used. The table's note and the captions name
    their own weights instead."""
    from vaesweep.analysis.figures.captions import setting

    df = _schedule_frame(schedule)
    assert setting(df) == said
    assert said in results_table(df).notes


def test_the_setting_says_which_schedules_read_a_common_beta():
    from vaesweep.analysis.figures.captions import setting

    assert setting(_schedule_frame("constant", "capacity")) == (
        "Setting: digits; β=1 (beta_schedule=constant)."
    )
    assert setting(_schedule_frame("capacity", "geco")) == "Setting: digits."


def test_rate_distortion_puts_each_kind_of_data_on_its_own_axes():
    """A Bernoulli's reconstruction NLL and MSE are of binarised images, a Gaussian's of
    dequantised grey levels: one row of panels per kind of data, titled with it, as the
    NLL figure does; never both on one axis."""
    from vaesweep.analysis.figures.captions import caption

    targets = {
        "gaussian": "vaesweep.model.likelihoods.GaussianLikelihood",
        "bernoulli": "vaesweep.model.likelihoods.BernoulliLikelihood",
    }
    parts = []
    for i, (name, target) in enumerate(targets.items()):
        part = _hand_frame(
            {0.5: [5.0, 6.0], 2.0: [7.0, 8.0]},
            **{"config.likelihood.name": name, "config.likelihood._target_": target},
        )
        parts.append(part.assign(run_dir=part["run_dir"] + f",{name}", likelihood=name))
        parts[-1]["test/rec_nll"] = [100.0 * (i + 1) + k for k in range(4)]
        parts[-1]["test/mse"] = [0.01 * (i + 1)] * 4
    df = pd.concat(parts, ignore_index=True)
    df.attrs = {"swept": ["likelihood", "beta", "seed"], "metrics": ["test/nll", "test/kl"],
                "notes": []}  # fmt: skip
    fig = rate_distortion(df)
    assert len(fig.axes) == 4  # 2 kinds × (rec. NLL, MSE)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["dequantised data"] * 2 + ["binarised data"] * 2
    for ax, expected in zip(fig.axes, ["Gaussian"] * 2 + ["Bernoulli"] * 2, strict=True):
        labels = {line.get_label() for line in ax.get_lines() if len(line.get_xdata())}
        assert labels == {expected}
    # The rec. NLL axes hold their own kind's numbers only.
    (gaussian,) = [line for line in fig.axes[0].get_lines() if len(line.get_xdata())]
    (bernoulli,) = [line for line in fig.axes[2].get_lines() if len(line.get_xdata())]
    assert list(gaussian.get_xdata()) == [100.5, 102.5]
    assert list(bernoulli.get_xdata()) == [200.5, 202.5]
    assert "Lines: means over 2 seeds" in caption(fig)


def test_rate_distortion_means_leave_out_infinite_values():
    """A seed's ±inf (a W&B summary, a foreign results.json) is missing in the rate–distortion
    lines too: each β's point is the mean of the finite values."""
    inf = math.inf
    df = _hand_frame({0.5: [10.0, 14.0], 1.0: [12.0, 13.0]})
    df["test/rec_nll"] = [20.0, 22.0, 30.0, inf]
    df["test/mse"] = [0.1, 0.3, -inf, 0.2]
    df["test/kl"] = [5.0, 7.0, 3.0, inf]
    fig = rate_distortion(df)
    lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata())]
    ((xs, ys),) = [(list(line.get_xdata()), list(line.get_ydata())) for line in lines]
    assert xs == [21.0, 30.0] and ys == [6.0, 3.0]  # β = 0.5, 1 (the inf seed left out)
    # MSE panel: β = 1 has no seed with a finite MSE and a finite KL (seed 0's MSE and seed
    # 1's KL are infinite): no point, rather than one whose MSE is seed 1's and KL seed 0's.
    lines = [line for line in fig.axes[1].get_lines() if len(line.get_xdata())]
    ((xs, ys),) = [(list(line.get_xdata()), list(line.get_ydata())) for line in lines]
    assert xs == pytest.approx([0.2]) and ys == [6.0]
    # The caption counts the runs behind each point: 2 at β = 0.5, 1 at β = 1 (rec. NLL).
    from vaesweep.analysis.figures.captions import caption

    assert "Lines: means over 1–2 seeds" in caption(fig)


def test_every_row_that_shows_the_best_mean_is_bold():
    """β = 0.5 and β = 1 both average 11.00 (10, 12 and 11, 11): both bold, in Markdown and
    LaTeX (bolding one of two equal cells would claim a difference the table does not show);
    β = 2's 11.004 shows as 11.00 too, so it is as bold. β = 4 is not."""
    df = _hand_frame({0.5: [10.0, 12.0], 1.0: [11.0, 11.0], 2.0: [11.004, 11.004], 4.0: [20.0]})
    table = results_table(df)
    nll = table.columns.index("test/nll")
    assert [row[nll] for row in table.rows][:3] == ["11.00 ± 1.41", "11.00 ± 0.00", "11.00 ± 0.00"]
    assert [row[nll] for row in table.best] == [True, True, True, False]
    assert table.to_markdown().count("**11.00") == 3
    assert table.to_latex().count(r"\textbf{11.00") == 3


def test_a_setting_swept_to_null_is_labelled_null():
    """``likelihood.scale_lr=null,0.01`` (null: the optimiser's learning rate): the legend
    tells the two lines apart (``scale_lr=null``; the null line had no label, so no legend
    was drawn), and the table's setting cell reads ``null`` ("–" is a metric cell with no
    finite value)."""
    from vaesweep.analysis.figures.style import line_styles

    df = pd.concat(
        [
            _hand_frame({1.0: [10.0, 11.0]}, **{"likelihood.scale_lr": lr, "test/elbo": -12.0})
            for lr in (None, 0.01)
        ],
        ignore_index=True,
    )
    df.attrs = {
        "swept": ["likelihood.scale_lr", "beta", "seed"],
        "metrics": ["test/nll", "test/kl"],
        "notes": [],
    }
    styles = line_styles([(None,), (0.01,)], ["likelihood.scale_lr"], ["gaussian"] * 2, [None] * 2)
    labels = [style.label for style in styles.values()]
    assert len(set(labels)) == 2 and labels[0].endswith("=null") and labels[1].endswith("=0.01")
    # The β figure needs 2 values of β with completed runs: the same runs again at β = 2.
    both = pd.concat([df, df.assign(beta=2.0)], ignore_index=True)
    both.attrs = df.attrs
    fig = metric_vs_beta(both.assign(**{"config.likelihood.name": "gaussian"}))
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 2
    table = results_table(df)
    assert sorted(row[0] for row in table.rows) == ["0.01", "null"]


def _history_frame(
    tmp_path: Path, runs: list[dict], scales: dict[str, list[float]]
) -> pd.DataFrame:
    """Completed runs (the ``runs`` columns) each with a metrics.csv in its own directory
    under tmp_path: ``train/scale`` at steps 0, 10, ... from ``scales[run_dir name]``."""
    rows = []
    for run in runs:
        run_dir = tmp_path / run["name"]
        run_dir.mkdir()
        values = scales.get(run["name"])
        lines = ["step,train/scale,train/loss"]
        lines += [f"{10 * i},{v if values else ''},1.0" for i, v in enumerate(values or [1, 1])]
        (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
        extra = {k: v for k, v in run.items() if k != "name"}
        rows.append({"run_dir": str(run_dir), "status": "completed", "dataset": "digits",
                     "test/nll": 10.0, "test/kl": 1.0, **extra})  # fmt: skip
    df = pd.DataFrame(rows)
    df.attrs = {"swept": ["likelihood", "seed"], "metrics": ["test/nll"], "notes": []}
    return df


def test_scale_history_draws_a_likelihood_of_the_users_own(tmp_path):
    """A user's likelihood (by ``_target_``, no ``scale`` key) that logs ``train/scale``
    gets its own panel after the built-in ones (``vaesweep figures`` failed outright:
    'Number of columns must be a positive integer, not 0'); a Bernoulli beside them, which
    logs no scale, draws none; the lines are the means over seeds at each step."""
    runs = [
        {
            "name": f"{lik}{seed}",
            "likelihood": lik,
            "seed": seed,
            "config.likelihood.name": lik,
            "config.likelihood.scale": scale,
        }
        for lik, scale in (("student_t", None), ("gaussian", "learned"), ("bernoulli", None))
        for seed in (0, 1)
    ]
    scales = {
        "student_t0": [0.5, 0.25, 0.125],
        "student_t1": [0.5, 0.75, 0.375],
        "gaussian0": [1.0, 0.5, 0.25],
        "gaussian1": [1.0, 0.5, 0.25],
    }
    df = _history_frame(tmp_path, runs, scales)
    fig = scale_history(df)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["Gaussian: scale σ", "student_t: scale"]
    (student,) = fig.axes[1].get_lines()
    assert list(student.get_xdata()) == [0, 10, 20]
    assert list(student.get_ydata()) == [0.5, 0.5, 0.25]
    assert student.get_label() == "student_t"
    # Only the user's likelihood in the sweep: one panel, and every other figure written too.
    only = df[df["likelihood"] == "student_t"].drop(columns=["config.likelihood.scale"])
    only.attrs = df.attrs
    assert [ax.get_title(loc="left") for ax in scale_history(only).axes] == ["student_t: scale"]
    report = write_sweep_figures(only, tmp_path / "figures")
    assert (tmp_path / "figures" / "scale_history.png").is_file()
    assert (tmp_path / "figures" / "results_table.md").is_file(), report.skipped


def test_beta_zero_is_drawn_on_a_symlog_axis_and_the_others_a_decade_apart():
    """β = 0 (allowed: a plain autoencoder's objective) on the log β axis put 0.5, 1 and 4
    on one spot at the right edge. Now a symlog axis: linear up to the smallest β > 0, so
    every β > 0 keeps a log axis's spacing (equal ratios, equal distances), β = 0 left of
    them, each tick at its β."""
    df = _hand_frame({0.0: [20.0, 21.0], 0.5: [10.0, 12.0], 1.0: [11.0, 11.0], 4.0: [9.0, 9.5]})
    fig = metric_vs_beta(df.assign(**{"config.likelihood.name": "gaussian"}), ("test/nll",))
    (ax,) = fig.axes
    assert ax.get_xscale() == "symlog"
    assert list(ax.get_xticks()) == [0.0, 0.5, 1.0, 4.0]
    (bars,) = ax.containers  # one configuration: no dodge
    line = bars.lines[0]
    assert list(line.get_xdata()) == [0.0, 0.5, 1.0, 4.0]
    assert list(line.get_ydata()) == [20.5, 11.0, 11.0, 9.25]
    x = ax.transData.transform(np.column_stack([[0.0, 0.5, 1.0, 2.0, 4.0], np.zeros(5)]))[:, 0]
    assert np.all(np.diff(x) > 0)
    # 0.5 → 1, 1 → 2, 2 → 4: one factor 2 each, so one distance on the log part.
    np.testing.assert_allclose(np.diff(x[1:]), np.diff(x[1:])[0], rtol=1e-6)
    # Without β = 0: the log axis as before.
    positive = df[df["beta"] > 0].assign(**{"config.likelihood.name": "gaussian"})
    positive.attrs = df.attrs
    assert metric_vs_beta(positive, ("test/nll",)).axes[0].get_xscale() == "log"


def test_image_figures_of_close_betas_are_kept_apart():
    """A search's β draws can agree to 6 digits (0.1234567, 0.12345671): their image
    figures were named with ``{β:g}`` (both ``_beta0.123457``, the later replacing the
    earlier) and their runs matched with np.isclose (both β's runs in each). Now each β
    names its own figures, to every digit that tells it apart, and draws its own runs."""
    from vaesweep.analysis.figures import sweep_plan
    from vaesweep.analysis.figures.grids import representatives

    df = _hand_frame({0.1234567: [10.0], 0.12345671: [11.0], 2.0: [12.0], 1e-9: [13.0]})
    names = [n for n in sweep_plan(df) if n.startswith("reconstructions")]
    assert names == [
        "reconstructions_beta0.000000001",
        "reconstructions_beta0.1234567",
        "reconstructions_beta0.12345671",
        "reconstructions_beta2",
    ]
    notes: list[str] = []
    with pytest.raises(FigureSkipped):  # no images.npz here: each run passed over is noted
        representatives(df, 0.1234567, notes)
    assert len(notes) == 1 and "beta=0.1234567,seed=0/images.npz" in notes[0]  # one run


def _write_result(
    root: Path,
    name: str,
    seed: int,
    beta: float = 1.0,
    note: str | None = None,
    metrics: dict | None = None,
) -> Path:
    """A completed run's results.json at ``root/name``, as a job writes it, made by hand:
    the Gaussian, σ fixed, on digits, ``beta=β`` and ``seed`` on its command line (and
    ``model.note=NOTE`` when given: a free-text setting), test metrics from ``metrics``
    over a default set (NLL 100 + seed, ...)."""
    config = {
        "seed": seed,
        "beta": beta,
        "data": {"name": "digits", "batch_size": 64},
        "model": {"name": "mlp", "latent_dim": 2},
        "likelihood": {"name": "gaussian", "scale": "fixed"},
        "trainer": {"max_epochs": 1},
        "logger": {"name": "csv"},
    }
    overrides = [f"beta={beta}", f"seed={seed}"]
    if note is not None:
        config["model"]["note"] = note
        overrides.append(f"model.note={note}")
    values = {
        "test/nll": 100.0 + seed,
        "test/elbo": -101.0 - seed,
        "test/bpd": 1.5,
        "test/rec_nll": 95.0 + seed,
        "test/kl": 5.0 + seed,
        "test/mse": 0.05,
    }
    values.update(metrics or {})
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "seed": seed,
                "job_name": ",".join(overrides),
                "overrides": overrides,
                "config": config,
                "metrics": values,
                "dataset": {"name": "digits", "fingerprint": "f" * 64},
                "finished_at": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    return run_dir


DOLLAR_NOTES = ("cost $5 to $6", r"x$\foo$", r"$\lambda^2$")


def test_config_values_with_dollar_signs_are_drawn_as_written(tmp_path):
    """A swept free-text setting holding ``$`` (``cost $5 to $6``, ``x$\\foo$``) made
    ``vaesweep figures`` fail with matplotlib's mathtext parse error, writing nothing, not
    even the table; ``$\\lambda^2$`` was drawn as the math λ². Every label is now drawn as
    written: each legend entry is as wide as its text drawn as plain text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    root = tmp_path / "runs"
    for i, note in enumerate(DOLLAR_NOTES):
        for beta in (0.5, 2.0):
            _write_result(root, f"n{i}-beta{beta}", 0, beta=beta, note=note)
    out = tmp_path / "figures"
    proc = vaesweep(["figures", str(root), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("nll_elbo_vs_beta", "bpd_vs_beta", "rate_distortion"):
        check_pdf_and_png(out, name)
    md = (out / "results_table.md").read_text()
    for note in DOLLAR_NOTES:  # the table's cells hold the values too
        assert f"| {note} |" in md
    df = load_results(root)
    for fig in (metric_vs_beta(df), rate_distortion(df)):
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        (legend,) = fig.legends
        texts = legend.get_texts()
        drawn = sorted(t.get_window_extent(renderer).width for t in texts)
        prop = texts[0].get_fontproperties()
        plain = sorted(
            renderer.get_text_width_height_descent(f"note={note}", prop, ismath=False)[0]
            for note in DOLLAR_NOTES
        )
        np.testing.assert_allclose(drawn, plain, rtol=1e-6)


def test_a_figure_that_fails_to_draw_is_named_and_every_other_file_written(
    tmp_path, monkeypatch, capsys
):
    """A figure whose drawing fails (here: text matplotlib cannot parse, failing as the
    PDF is saved) stopped ``vaesweep figures`` with the bare error and wrote nothing. Now
    the error names the figure, no file of its name is left (not a PDF cut short), and the
    table and the other figures are written and listed."""
    import vaesweep.analysis.figures as figures
    from vaesweep.analysis import cli
    from vaesweep.analysis.figures.style import new_figure

    def unparsable(df):
        fig = new_figure()
        fig.text(0.5, 0.5, r"$\foo$")
        return fig

    monkeypatch.setattr(figures, "rate_distortion", unparsable)
    root = tmp_path / "runs"
    for beta in (0.5, 2.0):
        for seed in (0, 1):
            _write_result(root, f"beta{beta}-seed{seed}", seed, beta=beta)
    out = tmp_path / "figures"
    with pytest.raises(SystemExit) as stopped:
        cli.main(["figures", str(root), "--out", str(out)])
    assert stopped.value.code == 1
    said = capsys.readouterr()
    assert "vaesweep: error: 1 figure(s) could not be drawn: rate_distortion: ValueError" in (
        said.err
    )
    assert "Unknown symbol: \\foo" in said.err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "bpd_vs_beta.pdf",
        "bpd_vs_beta.png",
        "nll_elbo_vs_beta.pdf",
        "nll_elbo_vs_beta.png",
        "results_table.md",
        "results_table.tex",
    ]
    assert sorted(Path(line).name for line in said.out.split()) == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "runs"]  # no temp dir


def test_table_cells_escape_every_latex_special_and_the_markdown_pipe(tmp_path):
    """Free-text values in the table: LaTeX's specials printed as written (``$``, ``^``,
    ``{``, ``}``, ``~`` and ``\\`` went through, ``$\\lambda^2$`` becoming
    ``$\\textbackslash{}lambda^2$``, a LaTeX error, and ``~`` a non-breaking space), and
    a ``|`` in a Markdown cell no longer ends the cell."""
    notes = [r"$\lambda^2$ {y}", "naïve~#1", "50% & a_b", "a|b"]
    root = tmp_path / "runs"
    for i, note in enumerate(notes):
        _write_result(root, f"n{i}", 0, note=note)
    out = tmp_path / "figures"
    proc = vaesweep(["figures", str(root), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    tex = (out / "results_table.tex").read_text().splitlines()
    escaped = [  # by hand, one per value, in the rows' order (sorted as text)
        r"\$\textbackslash{}lambda\textasciicircum{}2\$ \{y\}",
        r"50\% \& a\_b",
        r"a\textbar{}b",
        r"naïve\textasciitilde{}\#1",
    ]
    start = tex.index(r"\midrule") + 1
    rows = tex[start : start + 4]
    assert [row.split(" & ")[0] for row in rows] == escaped
    assert tex[start - 2].startswith(r"model.note & NLL (nats) $\downarrow$ & ")
    md = (out / "results_table.md").read_text().splitlines()
    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in md if line.startswith("| ")]
    assert {len(row) for row in cells} == {7}  # the key and 6 metrics in every row
    assert [row[0].strip() for row in cells[1:]] == [r"$\lambda^2$ {y}", "50% & a_b", r"a\|b",
                                                     "naïve~#1"]  # fmt: skip


def test_rate_distortion_without_swept_beta_says_what_it_draws():
    """β not swept: no line can join β values, yet the title said "lines: mean over seeds,
    joining β values" and the caption "Lines: means over 2 seeds". Now each configuration's
    mean over its seeds is one large marker, and the title and caption say so."""
    from tempfile import TemporaryDirectory

    from vaesweep.analysis.figures.captions import caption

    with TemporaryDirectory() as tmp:
        for note in ("a", "b"):
            for seed in (0, 1):
                _write_result(Path(tmp), f"{note}{seed}", seed, note=note)
        df = load_results(tmp)
    fig = rate_distortion(df)
    assert fig.axes[0].get_title(loc="left") == (
        "small markers: runs; large markers: mean over seeds"
    )
    said = caption(fig)
    assert "Small markers: single runs. Large markers: means over 2 seeds." in said
    assert "Lines" not in said
    # By hand: seeds 0 and 1 have rec. NLL 95, 96, MSE 0.05 and KL 5, 6.
    for ax, distortion in zip(fig.axes, (95.5, 0.05), strict=True):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["note=a", "note=b"]
        for line in lines:
            assert line.get_linestyle() == "None"
            assert list(line.get_xdata()) == pytest.approx([distortion])
            assert list(line.get_ydata()) == pytest.approx([5.5])


def test_a_row_that_ran_fewer_seeds_is_not_said_to_have_failed_runs(tmp_path):
    """Two sweeps pooled, β = 1 run with one seed, β = 2 with two, every run completed:
    the † note blamed runs that "did not complete or lack a finite value"; now it says
    what is true, that the row has fewer seeds."""
    _write_result(tmp_path / "one_seed", "beta1-seed0", 0, beta=1.0)
    for seed in (0, 1):
        _write_result(tmp_path / "two_seeds", f"beta2-seed{seed}", seed, beta=2.0)
    out = tmp_path / "figures"
    proc = vaesweep(
        ["figures", str(tmp_path / "one_seed"), str(tmp_path / "two_seeds"), "--out", str(out)],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    md = (out / "results_table.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert rows == [  # by hand: NLL 100 + seed, ELBO −101 − seed, rec. NLL 95 + seed, ...
        "| 1 | **100.0**† | **1.500**† | **-101.0**† | **95.00**† | 5.00† | **0.0500**† |",
        "| 2 | 100.5 ± 0.7 | **1.500 ± 0.000** | -101.5 ± 0.7 | 95.50 ± 0.71 | 5.50 ± 0.71 "
        "| **0.0500 ± 0.0000** |",
    ]
    assert "† over 1 of 2 seeds (the row has fewer seeds than the others)." in md
    assert "did not complete" not in md and "finite" not in md


def test_huge_and_tiny_means_are_written_in_scientific_notation():
    """A run's test/mse of 1e300 showed as a 300-digit mean without ± (np.std overflowed to
    inf and the cell dropped it, as for one seed), and 2e-9 as 0.0000. Now both are in
    scientific notation with their std; a spread beyond the largest float is "± inf";
    no warning reaches the terminal."""
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as tmp:
        for beta, mses in ((1.0, (1e300, 0.05)), (2.0, (1e-9, 3e-9))):
            for seed, mse in enumerate(mses):
                _write_result(Path(tmp), f"b{beta}-s{seed}", seed, beta, metrics={"test/mse": mse})
        proc = vaesweep(["figures", tmp, "--out", str(Path(tmp) / "out")], Path(tmp))
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr
        md = (Path(tmp) / "out" / "results_table.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    # By hand: mean (a + b)/2, std (ddof = 1) |a − b|/√2, to 3 significant digits.
    assert rows[0].endswith("| 5.00e+299 ± 7.07e+299 |")
    assert rows[1].endswith("| **2.00e-09 ± 1.41e-09** |")
    # ±1.5e308: mean 0, std 3e308/√2, beyond the largest float.
    table = results_table(_hand_frame({1.0: [1.5e308, -1.5e308]}))
    assert table.rows[0][table.columns.index("test/nll")] == "0.00 ± inf"


def test_beta_figures_need_two_betas_with_completed_runs(tmp_path):
    """β swept over 0.5 and 2, but every β = 2 run failed: nll_elbo_vs_beta and bpd_vs_beta
    were drawn over a single β (the swept keys of all runs were checked, not the completed
    ones). Now they are skipped saying why; rate_distortion draws no line through one β."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        _write_result(root, f"b0.5-s{seed}", seed, 0.5)
        failed = _write_result(root, f"b2-s{seed}", seed, 2.0) / "results.json"
        result = json.loads(failed.read_text())
        result.update(status="failed", metrics={},
                      error={"type": "RuntimeError", "message": "out of memory"})  # fmt: skip
        failed.write_text(json.dumps(result))
    out = tmp_path / "figures"
    proc = vaesweep(["figures", str(root), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("nll_elbo_vs_beta", "bpd_vs_beta"):
        assert (
            f"skipped {name}: beta has completed runs at 1 value(s) only (0.5): this figure "
            "needs at least 2 values of beta"
        ) in proc.stderr
        assert not list(out.glob(f"{name}.*"))
    assert (out / "results_table.md").is_file()
    fig = rate_distortion(load_results(root))
    assert fig.axes[0].get_title(loc="left").startswith("small markers: runs; large markers")

"""``vaesweep evaluate``: finished runs scored again with more importance samples, from their
checkpoints, without retraining.

- Exact: the module's test path (the one evaluate drives) on a linear-Gaussian model whose
  encoder is its exact posterior gives log p(x) exactly for any K (every importance weight
  is p(x)); the reference is scipy's multivariate normal density of x.
- A real run evaluated again at its own K reproduces its recorded test metrics exactly (the
  checkpoint's RNG state is restored, as in the run); a larger K gives a tighter bound; the
  result lies beside results.json, a second evaluation is not computed again, and collect
  shows its columns.
- A run tested on its first batches only (trainer.limit_test_batches) is evaluated on the
  same examples, so its own K gives its recorded metrics exactly; an IWAE chunk that would
  not fit is refused per run by a run's own memory check before anything is scored; a
  setting given twice or a value that is no integer is refused naming its key.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from vaesweep.analysis.results import load_results
from vaesweep.model.location_scale import GaussianLikelihood
from vaesweep.model.module import VAE
from vaesweep.model.networks import Network
from vaesweep.model.schedules import ConstantBeta
from vaesweep.run.evaluate import score

from conftest import TINY, cli_env, run_cli

SHAPE, D, d, S = (1, 2, 3), 6, 2, 0.5


class _Affine(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.anchor = nn.Parameter(torch.zeros(()))  # the optimiser needs a parameter

    def forward(self, t):
        return self.fn(t)


class LinearGaussianNetwork(Network):
    """p(z) = N(0, I), p(x|z) = N(Wz + c, S² I) with orthogonal columns of W, so the exact
    posterior N(m(x), Σ) is diagonal: the encoder returns exactly it."""

    name = "linear_gaussian"

    def __init__(self, latent_dim: int = d) -> None:
        super().__init__(latent_dim)
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([1.5, 0.7], dtype=torch.float64)  # orthogonal columns
        self.c = torch.randn(D, generator=g, dtype=torch.float64)
        self.cov = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + self.W.T @ self.W / S**2)

    def encoder(self, shape):
        def encode(x):
            x = x.double().reshape(x.shape[0], -1)
            m = (x - self.c) @ self.W @ self.cov / S**2
            return torch.cat([m, self.cov.diagonal().log().expand_as(m)], -1).float()

        return _Affine(encode)

    def decoder(self, shape, param_channels):
        return _Affine(
            lambda z: (z.double() @ self.W.T + self.c).reshape(*z.shape[:-1], *shape).float()
        )

    def log_px(self, x: torch.Tensor) -> np.ndarray:
        cov = (self.W @ self.W.T + S**2 * torch.eye(D, dtype=torch.float64)).numpy()
        flat = x.double().reshape(len(x), -1).numpy()
        return stats.multivariate_normal(self.c.numpy(), cov).logpdf(flat)


class _TestSplit(L.LightningDataModule):
    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.x = x

    def test_dataloader(self):
        return torch.utils.data.DataLoader(self.x, batch_size=50)


@pytest.mark.parametrize("k", [1, 5000])
def test_the_test_path_is_exact_on_a_linear_gaussian_model(k):
    network = LinearGaussianNetwork()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(200, d, generator=g, dtype=torch.float64)
    x = z @ network.W.T + network.c + S * torch.randn(200, D, generator=g, dtype=torch.float64)
    x = x.reshape(200, *SHAPE).float()
    model = VAE(
        likelihood=GaussianLikelihood(SHAPE, scale_value=S),
        schedule=ConstantBeta(1.0),
        network=network,
        iwae_k=k,
        iwae_chunk=500,
        report_bpd=False,
    )
    metrics = score(model, _TestSplit(x))
    exact = -float(network.log_px(x).mean())
    assert metrics["test/nll"] == pytest.approx(exact, rel=1e-5)
    # The other test metrics against closed forms of this model (numpy, float64). With the
    # exact posterior q = N(m, Σ): KL(q ‖ N(0, I)) = (tr Σ + m·m − d − log det Σ) / 2 and
    # E_q[−log p(x|z)] = D/2 log(2πS²) + (‖x − Wm − c‖² + tr(WΣWᵀ)) / (2S²); their sum is
    # −log p(x) (the ELBO is tight). bits/dim with D = 6 pixels: 8 + nll / (6 ln 2).
    W, c, cov = network.W.numpy(), network.c.numpy(), network.cov.numpy()
    flat = x.double().reshape(len(x), -1).numpy()
    m = (flat - c) @ W @ cov / S**2
    kl = 0.5 * (np.trace(cov) + (m**2).sum(1) - d - np.log(np.linalg.det(cov)))
    resid = ((flat - m @ W.T - c) ** 2).sum(1) + np.trace(W @ cov @ W.T)
    rec = 0.5 * D * np.log(2 * np.pi * S**2) + resid / (2 * S**2)
    assert metrics["test/kl"] == pytest.approx(kl.mean(), rel=1e-5)
    assert kl.mean() + rec.mean() == pytest.approx(exact, rel=1e-9)  # the model is exact
    # rec_nll is a Monte Carlo mean over the K samples of every example, folded over K / 500
    # chunks: within 6 standard errors of the closed form (the per-sample spread drawn here
    # with numpy's own generator); a chunk dropped or a sum divided by the chunk size instead
    # of K is off by a factor of 10.
    rng = np.random.default_rng(0)
    eps = rng.multivariate_normal(np.zeros(d), cov, size=(64, len(flat)))
    draws = ((flat - (m + eps) @ W.T - c) ** 2).sum(-1) / (2 * S**2)
    se = draws.std() / math.sqrt(k * len(flat))
    assert abs(metrics["test/rec_nll"] - rec.mean()) < 6 * se + 1e-5 * abs(rec.mean())
    assert metrics["test/elbo"] == pytest.approx(-metrics["test/rec_nll"] - metrics["test/kl"])
    if k > 1:  # with K = 1, E[IWAE_1] = ELBO: both are the same single-sample estimate
        assert metrics["test/elbo"] == pytest.approx(-exact, abs=6 * se + 1e-5 * abs(exact))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    proc = run_cli([*TINY, "logger=none", "hydra.run.dir=run"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def _evaluate(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "vaesweep", "evaluate", *args],
        cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_evaluate_reproduces_the_run_then_tightens_the_bound(run, tmp_path):
    recorded = json.loads((run / "results.json").read_text())
    before = (run / "results.json").read_bytes()
    k = recorded["config"]["eval"]["iwae_k"]
    proc = _evaluate([str(run), f"eval.iwae_k={k}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Lightning's account of the Trainer the command builds, its tips and the warnings
    # about how vaesweep calls it are not the user's business.
    noise = ("GPU available", "Tip:", "Restoring states", "Be aware", "LeafSpec")
    assert not [n for n in noise if n in proc.stderr + proc.stdout], proc.stderr
    same = json.loads((run / "evaluations" / f"iwae_k={k},checkpoint=last.json").read_text())
    for key in ("test/nll", "test/elbo", "test/kl", "test/mse"):
        assert same["metrics"][key] == recorded["metrics"][key], key  # exactly the run's
    more = _evaluate([str(run), "eval.iwae_k=200"], tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    tighter = json.loads((run / "evaluations" / "iwae_k=200,checkpoint=last.json").read_text())
    assert tighter["metrics"]["test/nll"] < recorded["metrics"]["test/nll"]
    assert math.isclose(
        tighter["metrics"]["test/elbo"], recorded["metrics"]["test/elbo"], rel_tol=0.05
    )
    assert (run / "results.json").read_bytes() == before  # beside it, never over it
    again = _evaluate([str(run), "eval.iwae_k=200"], tmp_path)
    assert again.returncode == 0 and "1 already evaluated" in again.stderr
    df = load_results(run)
    column = "test/nll@iwae_k=200,checkpoint=last"
    assert df[column].iloc[0] == tighter["metrics"]["test/nll"]


@pytest.mark.slow
def test_evaluate_refuses_bad_settings_in_one_line(tmp_path, capsys):
    from vaesweep.analysis.cli import main

    # The command line once, in its own process (one line, no traceback) ...
    proc = _evaluate([str(tmp_path), "eval.iwae_k=0"], tmp_path)
    assert proc.returncode != 0 and "eval.iwae_k=0 is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr
    # ... and its entry point for the other settings (the same checks and words as a run's
    # config, vaesweep.run.config.check_test_settings).
    for setting, message in [
        ("eval.iwae_k=1000000", r"eval.iwae_k=1000000 is invalid.*100000.* h per 1000 test"),
        ("eval.iwae_chunk=0", r"eval.iwae_chunk=0 is invalid"),
        ("eval.k=5", r"eval.k=5 is neither a directory nor a setting.*allowed keys eval.iwae_k"),
    ]:
        try:
            status = main(["evaluate", str(tmp_path), setting])
        except SystemExit as usage_error:  # argparse's way out
            status = usage_error.code
        assert status not in (0, None)
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err, err


def test_test_examples_are_the_first_of_the_split_with_their_own_noise():
    from vaesweep.data import VAEDataModule

    full = VAEDataModule("mnist_small", preprocess="dequantize", seed=3).test_tensor()
    first = VAEDataModule("mnist_small", preprocess="dequantize", seed=3, test_examples=7)
    assert torch.equal(first.test_tensor(), full[:7])
    everything = VAEDataModule("mnist_small", preprocess="dequantize", test_examples=10**9)
    assert torch.equal(everything.test_tensor(), full)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="test_examples"):
            VAEDataModule("mnist_small", test_examples=bad)


@pytest.mark.slow
def test_evaluate_on_the_first_test_examples(run, tmp_path):
    """eval.test_examples=N: its own file and columns, N examples scored; N at least the
    split's size scores exactly what the run recorded, and is named as the whole split's
    evaluation (not as N examples that were never there)."""
    recorded = json.loads((run / "results.json").read_text())
    k, n_all = recorded["config"]["eval"]["iwae_k"], int(recorded["metrics"]["test/n_examples"])
    for n in (n_all, 100 * n_all):
        proc = _evaluate([str(run), f"eval.iwae_k={k}", f"eval.test_examples={n}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not list((run / "evaluations").glob("*test_examples=*"))
    whole = json.loads((run / "evaluations" / f"iwae_k={k},checkpoint=last.json").read_text())
    assert whole["test_examples"] is None
    for key in ("test/nll", "test/elbo", "test/n_examples"):
        assert whole["metrics"][key] == recorded["metrics"][key], key
    proc = _evaluate([str(run), f"eval.iwae_k={k}", "eval.test_examples=50"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    some = json.loads(
        (run / "evaluations" / f"iwae_k={k},checkpoint=last,test_examples=50.json").read_text()
    )
    assert some["metrics"]["test/n_examples"] == 50 and some["test_examples"] == 50
    assert some["metrics"]["test/nll"] != recorded["metrics"]["test/nll"]
    df = load_results(run)
    assert df[f"test/n_examples@iwae_k={k},checkpoint=last,test_examples=50"].iloc[0] == 50
    bad = _evaluate([str(run), "eval.test_examples=0"], tmp_path)
    assert bad.returncode != 0 and "eval.test_examples=0 is invalid" in bad.stderr


@pytest.mark.slow
def test_evaluate_leaves_out_what_collect_does_not_count(tmp_path, capsys):
    """A trainer.fast_dev_run run records completed, with test metrics, but
    is no result (collect lists it as fast_dev_run); a result that says completed without
    test metrics is incomplete. evaluate names each with collect's status and reason, scores
    neither, and exits 1 when nothing else is left; the others are evaluated."""
    from vaesweep.analysis.cli import main

    runs = tmp_path / "runs"
    dev_run = ["logger=none", "trainer.fast_dev_run=true", "hydra.run.dir=runs/dev"]
    proc = run_cli([*TINY, *dev_run], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dev = (runs / "dev").resolve()
    # Lightning writes no checkpoint under fast_dev_run: what evaluate names is the status
    # (its refusal below is collect's, not a missing checkpoint's).
    assert not (dev / "checkpoints" / "last.ckpt").exists()
    empty = runs / "empty"
    shutil.copytree(dev, empty)
    result = json.loads((empty / "results.json").read_text())
    result["config"]["trainer"]["fast_dev_run"] = False
    result["metrics"] = {}
    (empty / "results.json").write_text(json.dumps(result))
    lines = {
        f"{dev}: not evaluated, fast_dev_run (trainer.fast_dev_run: one batch of each split, "
        "not a result)",
        f"{empty.resolve()}: not evaluated, incomplete (says completed but holds no finite "
        "test/nll, test/elbo)",
    }
    assert main(["evaluate", str(runs), "eval.iwae_k=10"]) == 1
    err = capsys.readouterr().err
    assert lines <= set(err.splitlines()), err
    assert "2 not completed, not evaluated (1 fast_dev_run, 1 incomplete)" in err
    assert (
        "vaesweep: error: none of the 2 run(s) found completed (1 fast_dev_run, 1 incomplete): "
        "nothing to evaluate"
    ) in err
    assert not (dev / "evaluations").exists() and not (empty / "evaluations").exists()
    # collect says the same of them.
    assert main(["collect", "--aggregate", str(runs)]) == 1
    err = capsys.readouterr().err
    assert "none of the 2 runs completed (" in err
    assert "1 fast_dev_run" in err and "1 incomplete" in err
    assert main(["collect", str(runs)]) == 0  # the listing shows them, with why
    listing = capsys.readouterr()
    assert "1 fast_dev_run" in listing.err and "1 incomplete" in listing.err
    assert "fast_dev_run" in listing.out and "incomplete" in listing.out

    # Beside a run that is a result: that one is evaluated, the others named, exit 0.
    proc = run_cli([*TINY, "logger=none", "hydra.run.dir=runs/kept"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["evaluate", str(runs), "eval.iwae_k=10"]) == 0
    err = capsys.readouterr().err
    assert lines <= set(err.splitlines()), err
    assert "evaluated 1 run(s); 0 already evaluated; 2 not completed, not evaluated" in err
    assert (runs / "kept" / "evaluations" / "iwae_k=10,checkpoint=last.json").is_file()
    assert not (dev / "evaluations").exists() and not (empty / "evaluations").exists()


def test_job_directories_named_with_equals_signs_are_directories(tmp_path):
    """Job directories are named after their overrides (beta=1,seed=0): an existing path is
    a directory, an eval.KEY=VALUE a setting, whatever the order."""
    from vaesweep.analysis.cli import evaluate_arguments

    job = tmp_path / "beta=1,likelihood=laplace,seed=0"
    job.mkdir()
    dirs, settings = evaluate_arguments(
        [str(job), "eval.iwae_k=50", str(tmp_path), "eval.test_examples=10"]
    )
    assert dirs == [str(job), str(tmp_path)]
    assert settings["eval.iwae_k"] == 50 and settings["eval.test_examples"] == 10
    assert settings["eval.checkpoint"] == "last" and settings["eval.iwae_chunk"] is None
    with pytest.raises(ValueError, match="beta=2 is neither a directory nor a setting"):
        evaluate_arguments(["beta=2"])  # a typo'd directory is not silently a setting


@pytest.fixture(scope="module")
def limited_run(tmp_path_factory):
    """A run tested on its first test batch only (50 of digits' 200 test examples)."""
    root = tmp_path_factory.mktemp("limited")
    limit = ["trainer.limit_test_batches=1", "data.eval_batch_size=50"]
    proc = run_cli([*TINY, *limit, "logger=none", "hydra.run.dir=run"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.mark.parametrize(
    "limit, split, batch, expected",
    [
        (None, 200, 50, 200),
        (1, 200, 50, 50),
        (3, 201, 50, 150),
        (10, 200, 50, 200),
        (1.0, 201, 50, 201),
        (0.5, 200, 50, 100),
        (0.3, 200, 50, 50),  # int(4 × 0.3) = 1 batch
        (0.99, 201, 50, 200),  # int(5 × 0.99) = 4 full batches
    ],
)
def test_tested_examples_are_the_first_batches_lightning_keeps(limit, split, batch, expected):
    """How many test examples a run with trainer.limit_test_batches scored: Lightning's own
    count of the batches it keeps, times the batch size (only the last batch is short)."""
    from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
    from lightning.pytorch.trainer.states import RunningStage

    from vaesweep.run.evaluate import tested_examples

    assert tested_examples(limit, split, batch) == expected
    batches = math.ceil(split / batch)
    kept = _parse_num_batches(RunningStage.TESTING, batches, 1.0 if limit is None else limit)
    assert min(split, kept * batch) == expected


@pytest.mark.slow
def test_evaluate_scores_the_test_examples_the_run_was_scored_on(limited_run, tmp_path, capsys):
    """A run with trainer.limit_test_batches=1 data.eval_batch_size=50 recorded its test
    metrics on 50 of its 200 test examples: evaluated at its own K, the same 50 are scored
    and its metrics come back exactly, under the unsuffixed name (comparable with the run's
    own columns), the limit recorded. An evaluation of that name over another number of
    examples (written before the limit was applied) is scored again, not kept.
    eval.test_examples names what else is scored."""
    from vaesweep.analysis.cli import main

    run = limited_run
    recorded = json.loads((run / "results.json").read_text())
    assert recorded["metrics"]["test/n_examples"] == 50
    k = recorded["config"]["eval"]["iwae_k"]
    own = run / "evaluations" / f"iwae_k={k},checkpoint=last.json"
    own.parent.mkdir()
    stale = {"status": "completed", "iwae_k": k, "checkpoint": "last", "test_examples": None}
    stale["metrics"] = {"test/nll": 1.0, "test/elbo": -1.0, "test/n_examples": 200.0}
    own.write_text(json.dumps(stale))
    proc = _evaluate([str(run), f"eval.iwae_k={k}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evaluated 1 run(s); 0 already evaluated" in proc.stderr, proc.stderr
    same = json.loads(own.read_text())
    assert same["test_examples"] is None and same["limit_test_batches"] == 1
    for key in ("test/nll", "test/elbo", "test/kl", "test/mse", "test/n_examples"):
        assert same["metrics"][key] == recorded["metrics"][key], key  # exactly the run's
    # The first 20 of them; the whole split (more than the run scored, so named so); and
    # the run's own 50 again (already evaluated).
    for n, name, count in [(20, "test_examples=20", 20), (1000, "test_examples=200", 200)]:
        assert main(["evaluate", str(run), f"eval.iwae_k={k}", f"eval.test_examples={n}"]) == 0
        some = json.loads(
            (run / "evaluations" / f"iwae_k={k},checkpoint=last,{name}.json").read_text()
        )
        assert some["metrics"]["test/n_examples"] == count and some["test_examples"] == count
    capsys.readouterr()
    assert main(["evaluate", str(run), f"eval.iwae_k={k}", "eval.test_examples=50"]) == 0
    assert "1 already evaluated" in capsys.readouterr().err
    assert len(list((run / "evaluations").glob("*.json"))) == 3
    df = load_results(run)
    assert df[f"test/n_examples@iwae_k={k},checkpoint=last"].iloc[0] == 50
    assert df[f"test/nll@iwae_k={k},checkpoint=last"].iloc[0] == recorded["metrics"]["test/nll"]


@pytest.mark.slow
def test_evaluate_refuses_a_limited_run_whose_examples_it_cannot_score_again(
    limited_run, tmp_path, capsys
):
    """Several processes each test the first batches of their own share: with a limit, the
    run's examples are not the split's first ones (its test/n_examples says so). No
    evaluation is named as the run's own then; eval.test_examples=N is, as the first N."""
    from vaesweep.analysis.cli import main

    run = tmp_path / "ddp"
    shutil.copytree(limited_run, run, ignore=shutil.ignore_patterns("evaluations"))
    result = json.loads((run / "results.json").read_text())
    result["metrics"]["test/n_examples"] = 100.0  # two processes, one batch of 50 each
    (run / "results.json").write_text(json.dumps(result))
    with pytest.raises(SystemExit) as refused:  # a run's problem: exit 1 at the end
        main(["evaluate", str(run), "eval.iwae_k=10"])
    assert refused.value.code == 1
    err = capsys.readouterr().err
    assert "cannot be scored on its own test examples: its test metrics are over 100" in err
    assert "trainer.limit_test_batches=1 with data.eval_batch_size=50" in err, err
    assert "eval.test_examples=N" in err and not (run / "evaluations").exists()
    assert main(["evaluate", str(run), "eval.iwae_k=10", "eval.test_examples=50"]) == 0
    named = run / "evaluations" / "iwae_k=10,checkpoint=last,test_examples=50.json"
    assert json.loads(named.read_text())["metrics"]["test/n_examples"] == 50


@pytest.mark.slow
def test_evaluate_refuses_an_iwae_chunk_that_would_not_fit_before_scoring(
    run, tmp_path, capsys, monkeypatch
):
    """A run's own memory check (vaesweep.run.memory), with the evaluation's eval.iwae_k and
    eval.iwae_chunk and each run's data.eval_batch_size: a chunk that would not fit is
    refused for that run, naming the key and the estimate, and the other runs go on. The
    memory is patched to 1 GB and the scoring replaced, so nothing large is allocated even
    where the check let it through."""
    import vaesweep.run.evaluate as evaluate
    from vaesweep.analysis.cli import main
    from vaesweep.run import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 10**9)
    scored = []

    def fake_score(model, data, ckpt_path=None, precision="32-true", deterministic=None):
        scored.append(ckpt_path)
        return {"test/nll": 1.0, "test/elbo": -1.0, "test/n_examples": 200.0}

    monkeypatch.setattr(evaluate, "score", fake_score)
    big, small = tmp_path / "runs" / "big", tmp_path / "runs" / "small"
    for copy in (big, small):
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("evaluations"))
    result = json.loads((small / "results.json").read_text())
    result["config"]["data"]["eval_batch_size"] = 1  # 100000 samples × 1 example: ~0.1 GB
    (small / "results.json").write_text(json.dumps(result))
    chunk = ["eval.iwae_k=100000", "eval.iwae_chunk=100000"]
    with pytest.raises(SystemExit) as refused:  # a run's problem: exit 1 at the end
        main(["evaluate", str(tmp_path / "runs"), *chunk])
    assert refused.value.code == 1
    err = capsys.readouterr().err
    assert re.search(
        rf"not evaluated: {re.escape(str(big))}: ConfigError: eval.iwae_chunk=100000 "
        r"is invalid: 100000 samples × data.eval_batch_size=500 examples per chunk need "
        r"~[0-9.]+ GB, more than 80% of the 1.0 GB",
        err,
    ), err
    assert "evaluated 1 run(s)" in err
    assert not (big / "evaluations").exists()
    assert scored == [str(small / "checkpoints" / "last.ckpt")]
    assert (small / "evaluations" / "iwae_k=100000,checkpoint=last.json").is_file()


def test_evaluate_refuses_a_setting_given_twice_or_malformed_by_its_key(tmp_path, capsys):
    """A key given twice is refused (the run's command line refuses it too), not silently
    the last; a value that is no integer is refused naming the key, the value and what is
    allowed (not Python's int() error)."""
    from vaesweep.analysis.cli import evaluate_arguments, main

    with pytest.raises(ValueError, match=r"eval.iwae_k is given twice on the command line "):
        evaluate_arguments(["eval.iwae_k=5000", "eval.iwae_k=10"])
    with pytest.raises(SystemExit) as usage_error:
        main(["evaluate", str(tmp_path), "eval.iwae_k=5000", "eval.iwae_k=10"])
    assert usage_error.value.code == 2
    err = capsys.readouterr().err
    assert (
        "eval.iwae_k is given twice on the command line (eval.iwae_k=5000 and "
        "eval.iwae_k=10): only the last, eval.iwae_k=10, would be used. Give each key once."
    ) in err
    assert evaluate_arguments(["eval.iwae_k=+7", "eval.iwae_chunk=null"])[1]["eval.iwae_k"] == 7
    for setting, message in [
        ("eval.iwae_k=--5", "eval.iwae_k='--5' is invalid: allowed an integer ≥ 1"),
        ("eval.iwae_k=5.0", "eval.iwae_k='5.0' is invalid: allowed an integer ≥ 1"),
        ("eval.iwae_chunk=-3", "eval.iwae_chunk=-3 is invalid: allowed null or an integer ≥ 1"),
        ("eval.test_examples=5x", "eval.test_examples='5x' is invalid"),
    ]:
        assert main(["evaluate", str(tmp_path), setting]) == 1, setting
        err = capsys.readouterr().err
        assert f"vaesweep: error: {message}" in err and "int()" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["64-true", "bf16-mixed"])
def test_evaluate_scores_at_the_precision_the_run_tested_at(tmp_path, precision):
    """A run tested at 64-true or bf16-mixed was scored again at 32-true: its own K gave
    other test metrics (61.448 against 61.455 at 64-true). The evaluation now runs at the
    run's recorded precision, records it, and reproduces the run exactly."""
    proc = run_cli(
        [*TINY, "logger=none", f"trainer.precision={precision}", "hydra.run.dir=run"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    recorded = json.loads((run / "results.json").read_text())
    assert recorded["precision"] == precision
    k = recorded["config"]["eval"]["iwae_k"]
    proc = _evaluate([str(run), f"eval.iwae_k={k}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same = json.loads((run / "evaluations" / f"iwae_k={k},checkpoint=last.json").read_text())
    assert same["precision"] == precision
    for key in ("test/nll", "test/elbo", "test/kl", "test/mse"):
        assert same["metrics"][key] == recorded["metrics"][key], key


def test_an_evaluation_runs_at_the_recorded_precision_this_machine_can_run(caplog):
    from vaesweep.run.evaluate import evaluation_precision

    for recorded in ("32-true", "64-true", "bf16-mixed", "bf16-true"):
        assert evaluation_precision(recorded, Path("r")) == recorded
    assert evaluation_precision(None, Path("r")) == "32-true"  # an older results.json
    if not torch.cuda.is_available():
        assert evaluation_precision("16-mixed", Path("r")) == "32-true"
        assert "ran at precision 16-mixed, which needs a GPU: scored at 32-true" in caplog.text


def test_evaluate_names_a_likelihood_that_cannot_be_imported_not_the_model_sizes(
    run, tmp_path, capsys
):
    """A run of a user's likelihood, evaluated where its module is not importable: the
    refusal names likelihood._target_ and the import failure (not model.hidden=...)."""
    from vaesweep.analysis.cli import main

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("evaluations"))
    result = json.loads((copy / "results.json").read_text())
    result["config"]["likelihood"]["_target_"] = "not_installed_anywhere.MyLikelihood"
    (copy / "results.json").write_text(json.dumps(result))
    with pytest.raises(SystemExit) as refused:
        main(["evaluate", str(copy), "eval.iwae_k=2"])
    assert refused.value.code == 1
    err = capsys.readouterr().err
    assert (
        f"not evaluated: {copy}: ConfigError: likelihood._target_="
        "'not_installed_anywhere.MyLikelihood' cannot be imported: ImportError"
    ) in err, err
    assert "model.hidden" not in err and not (copy / "evaluations").exists()


@pytest.mark.slow
def test_evaluate_draws_in_the_runs_own_chunks(tmp_path):
    """A run tested with eval.iwae_chunk=3 (K = 10 in chunks of 3, 3, 3, 1): its own K,
    evaluated without a chunk given, reproduces its test metrics exactly (the default chunk
    drew the samples otherwise), and the evaluation records the chunk."""
    proc = run_cli([*TINY, "logger=none", "eval.iwae_chunk=3", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    recorded = json.loads((run / "results.json").read_text())
    k = recorded["config"]["eval"]["iwae_k"]
    proc = _evaluate([str(run), f"eval.iwae_k={k}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same = json.loads((run / "evaluations" / f"iwae_k={k},checkpoint=last.json").read_text())
    assert same["iwae_chunk"] == 3
    for key in ("test/nll", "test/elbo", "test/kl", "test/mse"):
        assert same["metrics"][key] == recorded["metrics"][key], key


@pytest.mark.slow
def test_an_evaluation_that_is_not_finite_is_not_a_result(run, monkeypatch):
    """A score whose test NLL is NaN (K = 5000 draws more extreme z than the run's test) is
    written as diverged with the reason and raised, never read by collect, and scored again
    by the next call (it was written completed, then counted as done for ever and read as a
    NaN column)."""
    from vaesweep.run import evaluate

    real = evaluate.score

    def nan_nll(*args, **kwargs):
        return {**real(*args, **kwargs), "test/nll": math.nan}

    monkeypatch.setattr(evaluate, "score", nan_nll)
    plan = evaluate.plan_run(run, 12)
    with pytest.raises(evaluate.EvaluationDiverged, match=r"test/nll is nan"):
        evaluate.run_plan(plan)
    written = json.loads((run / "evaluations" / f"{plan.name}.json").read_text())
    assert written["status"] == "diverged" and "test/nll is nan" in written["error"]
    assert evaluate.plan_run(run, 12) is not None  # not done: scored again next time
    assert not [c for c in load_results(run).columns if c.endswith("@" + plan.name)]
    monkeypatch.setattr(evaluate, "score", real)
    assert evaluate.run_plan(evaluate.plan_run(run, 12))["status"] == "completed"
    assert evaluate.plan_run(run, 12) is None


def test_a_run_tested_on_several_processes_with_a_limit_is_not_scored_as_its_own(tmp_path):
    """10 000 test images in batches of 500, limit_test_batches=0.5, 2 processes: each
    tested its share's first 5 batches (images 0–2499 and 5000–7499), 5000 images in all,
    as many as one process's first 10 batches: the count alone passed, and images 0–4999
    were scored under the run's own name. The processes the run asked for refuse it."""
    from omegaconf import OmegaConf

    from vaesweep.core.checks import ConfigError
    from vaesweep.run.evaluate import _examples

    cfg = OmegaConf.create(
        {"trainer": {"limit_test_batches": 0.5, "devices": 2, "num_nodes": 1},
         "data": {"eval_batch_size": 500}}
    )  # fmt: skip
    result = {"dataset": {"sizes": {"test": 10000}}, "metrics": {"test/n_examples": 5000.0}}
    with pytest.raises(ConfigError, match=r"tested on 2 processes .* eval.test_examples=N"):
        _examples(result, cfg, None, Path("run"))
    assert _examples(result, cfg, 1000, Path("run")) == (10000, 1000, 1000)  # named so
    one = OmegaConf.merge(cfg, {"trainer": {"devices": 1}})
    assert _examples(result, one, None, Path("run")) == (10000, 5000, None)
    # A limit that cuts no process's share (1.0, or 1000 batches of its 10): every process
    # tested all of its share, the whole split: the run's own examples.
    whole = {**result, "metrics": {"test/n_examples": 10000.0}}
    for limit in (1.0, 1000, 10):
        every = OmegaConf.merge(cfg, {"trainer": {"limit_test_batches": limit}})
        assert _examples(whole, every, None, Path("run")) == (10000, 10000, None), limit
    nine = OmegaConf.merge(cfg, {"trainer": {"limit_test_batches": 9}})
    with pytest.raises(ConfigError, match=r"tested on 2 processes"):
        _examples(whole, nine, None, Path("run"))


def test_an_evaluation_tests_under_the_runs_deterministic_setting(run, monkeypatch):
    """An evaluation turned torch's deterministic algorithms on but built its Trainer
    without ``deterministic``, so Lightning never set CUBLAS_WORKSPACE_CONFIG: on a GPU the
    first matrix product raises under deterministic algorithms (every run a problem, none
    scored). Its Trainer now takes the run's setting, and with it sets the variable
    (checked here on the CPU: what the GPU needs is set the same way)."""
    from vaesweep.run import evaluate

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = {}
    real = evaluate.score

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen["cublas"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        return out

    monkeypatch.setattr(evaluate, "score", recording)
    plan = evaluate.plan_run(run, 3)
    assert plan.cfg.trainer.deterministic is True  # the default trainer's setting
    assert evaluate.run_plan(plan)["status"] == "completed"
    assert seen["cublas"] == ":4096:8"


def test_a_damaged_checkpoint_is_not_evaluated_with_advice_for_an_evaluation(run, tmp_path, capsys):
    """A run whose checkpoint is damaged (a byte of its largest tensor flipped: torch.load
    reads it silently) is named and not scored. The message said what a job's resume says
    ("it was not resumed. Run the same command with sweep.rerun_failed=true ..."), which a
    completed run cannot do; now it says it was not evaluated and what can be done."""
    from test_damaged import flip_a_weight

    from vaesweep.analysis.cli import main

    copy = tmp_path / "runs" / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("evaluations"))
    last = copy / "checkpoints" / "last.ckpt"
    flip_a_weight(last)
    with pytest.raises(SystemExit) as refused:
        main(["evaluate", str(copy), "eval.iwae_k=10"])
    assert refused.value.code == 1
    err = capsys.readouterr().err
    assert f"DamagedCheckpoint: checkpoint {last} is damaged" in err and "CRC" in err, err
    assert "it was not evaluated, and nothing was written" in err, err
    assert "eval.checkpoint=last or best" in err and "rerun_failed" not in err, err
    assert not (copy / "evaluations").exists()

"""The LightningModule: wires encoder, latent, decoder, likelihood and β schedule.

Training, validation and test use the definitions of :mod:`vaesweep.model.objective`:
``rec_nll`` and ``kl`` in nats per example (summed over dimensions, mean over the batch),
``elbo = −rec_nll − kl`` (β-free) and ``loss`` (the β-weighted objective).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.pytorch.core.saving import load_hparams_from_tags_csv, load_hparams_from_yaml
from torch import Tensor

from vaesweep.model import components
from vaesweep.model.components import OPTIMIZERS
from vaesweep.model.likelihood_base import Likelihood
from vaesweep.model.networks import Network
from vaesweep.model.objective import (
    DivergenceError,
    bits_per_dim,
    effective_beta,
    elbo_terms,
    full_precision,
    importance_estimates,
)
from vaesweep.model.schedules import BetaSchedule

# Config keys of the likelihood group that are not constructor options (vaesweep.model.components).
LIKELIHOOD_META_KEYS = components.META_KEYS["likelihood"]
#: The optimizer when none is given (torch's Adam at lr 1e-3; the runs' config adds options).
DEFAULT_OPTIMIZER = {"name": "adam", "lr": 1e-3}
#: Value types VAE.__setattr__ sets without nn.Module's registration checks (see there).
_PLAIN_VALUES = (str, type(None))
#: The VAE's component arguments: (argument, base class, config group, key of its config in
#: the hyperparameters of checkpoints: those of the VAE before it took built components).
COMPONENTS = (
    ("likelihood", Likelihood, "likelihood", "likelihood"),
    ("schedule", BetaSchedule, "beta_schedule", "schedule"),
    ("network", Network, "model", "model"),
)
OPTIMIZATION_MODES = ("manual", "automatic")
# Training metrics logged per step (train/<name>_step) and per epoch (train/<name>_epoch).
TRAIN_METRICS = ("loss", "rec_nll", "kl", "elbo")
# What the module keeps per step; elbo = −rec_nll − kl is derived when the values are read.
TRACKED = ("loss", "rec_nll", "kl")


def with_elbo(values: dict[str, Any]) -> dict[str, Any]:
    """TRACKED values (floats or tensors) plus elbo = −rec_nll − kl, in TRAIN_METRICS order."""
    return {**values, "elbo": -values["rec_nll"] - values["kl"]}


def build_optimizer(params: Any, config: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer of an optimizer config group: {"name": "adam"|"adamw", **its options}."""
    options = dict(config)
    name = options.pop("name")
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    return OPTIMIZERS[name](params, **options)


def _stored(component: Any) -> dict[str, Any] | str:
    """What a checkpoint keeps of a component: its config, else its class path."""
    return components.config_of(component) or components.class_path(component)


def _checkpoint_hparams(
    checkpoint: str | Path | IO, hparams_file: str | Path | None, weights_only: bool | None
) -> dict[str, Any]:
    """The hyperparameters ``load_from_checkpoint`` passes to the constructor: those of
    ``hparams_file`` (.yaml or .csv, as Lightning reads it) or of the checkpoint."""
    if hparams_file is not None:
        if str(hparams_file).lower().endswith(".csv"):
            return dict(load_hparams_from_tags_csv(hparams_file))
        return dict(load_hparams_from_yaml(hparams_file, use_omegaconf=False) or {})
    if isinstance(checkpoint, str | Path):
        state = torch.load(checkpoint, map_location="cpu", weights_only=weights_only)
    else:  # a file object, which Lightning then reads from where it was
        position = checkpoint.tell()
        state = torch.load(checkpoint, map_location="cpu", weights_only=weights_only)
        checkpoint.seek(position)
    return dict(state.get(L.LightningModule.CHECKPOINT_HYPER_PARAMS_KEY) or {})


def _rebuilt(hparams: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The components not ``given``, built from the configs in a checkpoint's hparams."""
    built = {}
    for argument, _, group, key in COMPONENTS:
        if argument in given:
            continue
        config = hparams.get(key)
        if not isinstance(config, Mapping):
            raise ValueError(
                f"the checkpoint holds no config of the VAE's {argument} (it holds {config!r}: "
                f"a component built in Python, not from a config): pass it, "
                f"VAE.load_from_checkpoint(path, {argument}=...)"
            )
        context = (tuple(hparams["shape"]),) if group == "likelihood" else ()
        built[argument] = components.build(group, dict(config), *context)
    return built


class StepTracker:
    """The training steps' TRACKED values, kept on the device and read back in batches.

    ``add`` writes one step's values into a row of a preallocated buffer: one device op and
    no host synchronisation (reading a value back every step would make the host wait for
    an accelerator every step). ``flush`` reads the buffer once: it raises DivergenceError
    for the first non-finite loss, with its step and values, and folds the rows into the
    epoch's batch-size-weighted sums, from which ``epoch_means`` gives the mean Lightning's
    ``on_epoch`` logging would compute (Σ_b B_b·v_b / Σ_b B_b).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._buffer: Tensor | None = None
        self._steps: list[int] = []
        self._sizes: list[int] = []
        self._sums: Tensor | None = None
        self._count = 0

    @property
    def full(self) -> bool:
        return len(self._steps) == self.capacity

    def new_epoch(self) -> None:
        self._sums, self._count = None, 0

    def add(self, values: list[Tensor], step: int, batch_size: int) -> None:
        """Records one step's values (0-dim tensors, in TRACKED order); flush first
        when ``full``."""
        device = values[0].device
        if self._buffer is None or self._buffer.device != device:
            self._buffer = torch.empty(self.capacity, len(values), device=device)
        torch.stack(values, out=self._buffer[len(self._steps)])
        self._steps.append(step)
        self._sizes.append(batch_size)

    def flush(self) -> None:
        """Checks and accumulates the recorded steps; raises DivergenceError for the first
        step whose loss is not finite."""
        n = len(self._steps)
        if n == 0:
            return
        rows = self._buffer[:n]
        finite = torch.isfinite(rows[:, 0])
        if not bool(finite.all()):  # the one read from the device
            first = int(finite.logical_not().nonzero()[0])
            values = dict(zip(TRACKED, rows[first].tolist(), strict=True))
            raise DivergenceError(self._steps[first], with_elbo(values))
        sizes = torch.tensor(self._sizes, dtype=rows.dtype, device=rows.device)
        sums = (rows * sizes[:, None]).sum(0)
        self._sums = sums if self._sums is None else self._sums + sums
        self._count += sum(self._sizes)
        self._steps.clear()
        self._sizes.clear()

    def epoch_means(self) -> dict[str, Tensor] | None:
        """Batch-size-weighted means of the flushed steps of this epoch (TRAIN_METRICS; the
        mean elbo is −mean rec_nll − mean kl), or None."""
        if self._count == 0:
            return None
        return with_elbo(dict(zip(TRACKED, self._sums / self._count, strict=True)))


class VAE(L.LightningModule):
    """A VAE: the encoder and decoder of a network, a likelihood and a β schedule.

    Components, built: ``likelihood`` (a :class:`~vaesweep.model.likelihood_base.Likelihood`
    for the data shape (C, H, W), which the VAE takes from it), ``schedule`` (a
    :class:`~vaesweep.model.schedules.BetaSchedule`) and ``network`` (a
    :class:`~vaesweep.model.networks.Network`, whose encoder and decoder the VAE builds, in
    that order: their initial weights are the first random numbers it draws)::

        VAE(likelihood=GaussianLikelihood((1, 28, 28), scale="learned"),
            schedule=ConstantBeta(1.0), network=MLP(latent_dim=16))

    trains with a plain ``lightning.Trainer``. The driver builds the components of a run's
    config with :func:`vaesweep.model.components.build_components`.

    optimizer: {"name": "adam"|"adamw", **its options} (default :data:`DEFAULT_OPTIMIZER`);
    n_samples: Monte Carlo samples of z per example in the training ELBO; iwae_k /
    iwae_chunk / active_units_threshold: test-set evaluation; report_bpd: whether bits/dim
    is defined (dequantised 8-bit data); seed: the run's seed (gives each data-parallel rank
    its own stream of reparameterisation noise); compile: torch.compile the encoder and
    decoder (in place: parameter names, state dicts and checkpoints are unchanged);
    gradient_clip_val / gradient_clip_algorithm: as the Trainer arguments of the same name
    ("norm" when null), applied by the module; optimization: "manual" (default) or
    "automatic", see below.

    Hyperparameters and checkpoints. The components are not hyperparameters (modules and
    objects); in their place the hyperparameters hold, under the keys checkpoints had
    before the VAE took built components (``shape``, ``model``, ``likelihood``,
    ``schedule``), the config each was built from (:func:`~vaesweep.model.components.build`
    records it), or its class path for one built otherwise. :meth:`load_from_checkpoint`
    builds them again from their configs; one stored as a class path must be passed
    (``VAE.load_from_checkpoint(path, network=MLP(latent_dim=16))``).

    Optimisation. With ``optimization="manual"`` the module takes its optimisation step
    itself (backward, clip, step, zero_grad in ``training_step``): Lightning's automatic
    optimisation wraps every step in a closure and a dozen more hook calls, ~0.13 ms per
    step on a small CPU (2-3 % of an MLP step). The numbers are the same: gradients, clipping
    (after AMP unscaling, where Lightning clips), the optimiser step and ``global_step`` are
    identical to automatic optimisation with the same Trainer arguments (tested). Gradient
    accumulation (``trainer.accumulate_grad_batches`` > 1) is Lightning's business: the
    Trainer must then get ``accumulate_grad_batches`` (and the clipping arguments) itself,
    with ``optimization="automatic"`` (``vaesweep.run.driver`` does this).
    """

    def __init__(
        self,
        likelihood: Likelihood,
        schedule: BetaSchedule,
        network: Network,
        optimizer: dict[str, Any] | None = None,
        n_samples: int = 1,
        iwae_k: int = 100,
        iwae_chunk: int | None = None,
        active_units_threshold: float = 0.01,
        report_bpd: bool = True,
        seed: int = 0,
        compile: bool = False,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        optimization: str = "manual",
    ) -> None:
        super().__init__()
        if optimization not in OPTIMIZATION_MODES:
            raise ValueError(f"optimization={optimization!r}: allowed: {OPTIMIZATION_MODES}")
        given = {"likelihood": likelihood, "schedule": schedule, "network": network}
        for argument, base, _, _ in COMPONENTS:
            if not isinstance(given[argument], base):
                raise TypeError(
                    f"VAE({argument}=...) takes a built {base.__module__}.{base.__name__}, got "
                    f"{type(given[argument]).__name__}; build one from a config with "
                    "vaesweep.model.components.build_components"
                )
        if optimizer is None:
            optimizer = dict(DEFAULT_OPTIMIZER)
        self.save_hyperparameters(ignore=list(given))  # the other arguments (a subclass's too)
        plain = {**self.hparams, "optimizer": optimizer}
        self.hparams.clear()
        # In the components' place: what builds them again (load_from_checkpoint), under the
        # keys and in the order of earlier checkpoints.
        self.save_hyperparameters(
            {
                "shape": tuple(likelihood.shape),
                "model": _stored(network),
                "likelihood": _stored(likelihood),
                "schedule": _stored(schedule),
                **plain,
            }
        )
        self.shape = tuple(likelihood.shape)
        self.likelihood = likelihood
        self.network = network
        self.encoder = network.encoder(self.shape)
        self.decoder = network.decoder(self.shape, likelihood.param_channels)
        if compile:
            self.encoder.compile()
            self.decoder.compile()
        self.schedule = schedule
        self._schedule_observes = type(self.schedule).observe is not BetaSchedule.observe
        # (rec_nll, kl) of the micro-batches since the last optimisation step, at step:
        self._pending: list[Tensor] = []
        self._pending_step = -1
        self.latent_dim = network.latent_dim
        self._test_sums: dict[str, Tensor] = {}
        self._tracker = StepTracker()
        #: Called with a DivergenceError just before it is raised (None: nobody). The driver
        #: sets it where the fit runs in processes a spawning strategy (ddp_spawn) started,
        #: whose exceptions reach the job's process only as the text of a traceback.
        self.on_divergence: Callable[[DivergenceError], None] | None = None
        self._loaded_rng: dict[str, Tensor] | None = None  # this rank's, from a checkpoint
        self._checkpoint_step: int | None = None  # global_step of the checkpoint loaded last
        self.automatic_optimization = optimization == "automatic"

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning re-sets a few plain attributes (names of the hook being called) ~35 times
        # per training step, and nn.Module.__setattr__ costs ~1.5 µs each (its parameter,
        # submodule and buffer checks): ~1 % of an MLP step. An attribute already in the
        # instance's __dict__ is none of those (nn.Module keeps them out of it), so a plain
        # value (str or None) replacing it gets exactly what nn.Module would do, faster.
        if type(value) in _PLAIN_VALUES and name in self.__dict__:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path | IO,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> VAE:
        """Lightning's ``load_from_checkpoint``, with the components built again from the
        configs the checkpoint's hyperparameters hold (those of checkpoints written before the
        VAE took built components too). A component given as a keyword argument is used as
        given; one whose checkpoint holds only its class path (built in Python) must be."""
        if hparams_file is not None:
            # Lightning would load the file as an OmegaConf DictConfig and update it with the
            # keyword arguments, which OmegaConf refuses for objects (the components). So the
            # file is read here and its values are passed as arguments instead: as with
            # Lightning, they replace the checkpoint's (an argument the file lacks takes its
            # default), and a keyword argument replaces the file's.
            hparams = _checkpoint_hparams(checkpoint_path, hparams_file, weights_only)
            defaults = {
                name: parameter.default
                for name, parameter in inspect.signature(cls.__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty
            }
            kwargs = {**defaults, **hparams, **_rebuilt(hparams, kwargs), **kwargs}
            hparams_file = None
        elif any(argument not in kwargs for argument, _, _, _ in COMPONENTS):
            hparams = _checkpoint_hparams(checkpoint_path, hparams_file, weights_only)
            kwargs = {**_rebuilt(hparams, kwargs), **kwargs}
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
        )

    # --- randomness: per-rank streams, saved with every checkpoint ------------------------------
    # Every rank's RNG state (torch CPU, and the rank's CUDA device) travels with the weights:
    # gathered into the checkpoint (rng_state["ranks"][r]), and on resume each rank gets its
    # own back, so a resumed run, DDP included, draws the same noise as an uninterrupted one
    # (bit-identical metrics on CPU). Restored at the start of fit or test, after Lightning
    # has set everything up; a fresh DDP fit instead seeds each rank differently.
    def on_fit_start(self) -> None:
        if not self._restore_rng() and self.trainer.world_size > 1:
            # Every rank starts from the same seed; without this the ranks would draw the
            # same ε for different examples (correlated noise across the global batch).
            torch.manual_seed(self.hparams.seed * 1_000_003 + self.trainer.global_rank)

    def on_test_start(self) -> None:
        self._restore_rng()

    def _rng_device(self) -> torch.device | None:
        """The rank's CUDA device, whose generator is saved too; None off CUDA."""
        device = self.trainer.strategy.root_device
        return device if device.type == "cuda" else None

    def _flush(self) -> None:
        """Reads the tracked steps (StepTracker.flush); a divergence is told to
        :attr:`on_divergence` before it is raised."""
        try:
            self._tracker.flush()
        except DivergenceError as error:
            if self.on_divergence is not None:
                self.on_divergence(error)
            raise

    def on_validation_start(self) -> None:
        # A validation inside an epoch (trainer.val_check_interval) comes before the tracker
        # was read at a logging step or the epoch's end: read it now, so that a non-finite
        # loss stops the run before weights it made are validated or checkpointed. (At an
        # epoch's end, and in a sanity check, it is empty: nothing read.)
        self._flush()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._flush()  # never a checkpoint of weights a non-finite loss made
        cuda = self._rng_device()
        own = {"torch": torch.get_rng_state()}
        if cuda is not None:
            own["cuda"] = torch.cuda.get_rng_state(cuda)
        states = [own]
        if self.trainer.world_size > 1:
            # A collective: Lightning saves checkpoints on every rank (only rank 0 writes).
            strategy = self.trainer.strategy
            on = strategy.root_device  # where the backend communicates (nccl: the GPU)
            gathered = {k: strategy.all_gather(v.to(on)).cpu() for k, v in own.items()}
            # One tensor each (a view at an offset would crash torch.set_rng_state).
            n = len(gathered["torch"])
            states = [{k: v[r].clone() for k, v in gathered.items()} for r in range(n)]
        checkpoint["rng_state"] = {"ranks": states}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The step the weights were saved at: a test in a fresh Trainer (an evaluation)
        # starts at global_step 0, and β, effective β are reported at the weights' step.
        step = checkpoint.get("global_step")
        self._checkpoint_step = step if isinstance(step, int) else None
        saved = checkpoint.get("rng_state")
        self._loaded_rng = None
        try:
            trainer = self.trainer
        except RuntimeError:  # loaded outside a Trainer (e.g. load_from_checkpoint)
            return
        if saved is None:
            return
        states = saved.get("ranks", [saved])  # older checkpoints: {"torch": one state}
        if len(states) == trainer.world_size:  # else: a different number of processes
            self._loaded_rng = states[trainer.global_rank]

    def _restore_rng(self) -> bool:
        """Puts back the RNG state of the checkpoint loaded last (once); whether it did."""
        state, self._loaded_rng = self._loaded_rng, None
        if state is None:
            return False
        torch.set_rng_state(state["torch"].clone())  # its own storage, at offset 0
        cuda = self._rng_device()
        if cuda is not None and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].clone(), cuda)
        return True

    # --- training ------------------------------------------------------------------------
    def _step_terms(self, x: Tensor, n_samples: int = 1) -> dict[str, Tensor]:
        terms = elbo_terms(x, self.encoder, self.decoder, self.likelihood, n_samples)
        rec_nll, kl = terms.rec_nll.mean(), terms.kl.mean()
        loss, beta = self.schedule(self.global_step, rec_nll, kl)
        return {"loss": loss, "rec_nll": rec_nll, "kl": kl, "beta": beta, "params": terms.params}

    def _log_scale(self, prefix: str, batch_size: int) -> None:
        scale = self.likelihood.scale()
        if scale is not None:
            # The same on every rank (sync_dist: as the other val/ metrics, and no warning)
            self.log(f"{prefix}scale", scale, batch_size=batch_size, sync_dist=True)

    def on_train_start(self) -> None:
        self._checkpoint_step = None  # the weights move on from any checkpoint loaded

    def on_train_epoch_start(self) -> None:
        self._tracker.new_epoch()
        self._pending.clear()  # (an epoch's last batch always steps: normally empty)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor | None:
        if self.likelihood.needs_scale_init():
            self._initialize_scale(batch)
        out = self._step_terms(batch, self.hparams.n_samples)
        # The one place a likelihood's running statistics change (the optimal scale's running
        # σ*: log_prob is pure): once per micro-batch, after its loss and before train/scale
        # is logged, on every rank (a collective under DDP).
        self.likelihood.observe(batch, out["params"])
        b = batch.shape[0]
        # Per step, the values only go into the tracker's device buffer. It is read back on
        # the steps Lightning writes to its loggers (which read the values anyway), at the
        # last batch of an epoch (before validation and checkpoints) and every 64 steps:
        # a non-finite loss then stops the run with the step where it happened, after at
        # most trainer.log_every_n_steps − 1 further steps, and is never checkpointed.
        self._tracker.add([out[k].detach() for k in TRACKED], self.global_step, b)
        # The steps on which Lightning writes to its loggers: every trainer.log_every_n_steps
        # optimisation steps (its own test counts the batches that stepped, = global_step).
        log_now = self.writes_step_metrics(batch_idx)
        if log_now or batch_idx == self.trainer.num_training_batches - 1 or self._tracker.full:
            self._flush()
        if self._schedule_observes:  # the controller observes after the optimiser step
            self._pending.append(torch.stack([out["rec_nll"].detach(), out["kl"].detach()]))
            self._pending_step = self.global_step
        if log_now:
            values = with_elbo({k: out[k].detach() for k in TRACKED})
            metrics = {f"train/{k}_step": v for k, v in values.items()} | {"beta": out["beta"]}
            scale = self.likelihood.scale()
            if scale is not None:
                metrics["train/scale"] = scale
            # The step Lightning gives a training step's logged values: the optimisation
            # steps taken before this batch (global_step before this batch's own step).
            self._write_to_loggers(metrics, step=self.global_step)
        if self.automatic_optimization:
            return out["loss"]
        # What Lightning's automatic optimisation does, minus its per-step machinery.
        self.manual_backward(out["loss"])
        optimizer = self.optimizers()
        optimizer.step()  # runs on_before_optimizer_step (clipping) and counts global_step
        optimizer.zero_grad()
        return None

    def on_train_batch_end(self, outputs: Any, batch: Tensor, batch_idx: int) -> None:
        # A controller (GECO, PI) observes once per optimisation step, after it: the mean of
        # the step's micro-batch means (all trainer.accumulate_grad_batches of them, as
        # Lightning averages their losses), averaged over the data-parallel ranks. Open-loop
        # schedules observe nothing (no all-reduce for them). global_step has moved iff the
        # optimiser stepped on this batch.
        if not self._pending or self.global_step == self._pending_step:
            return
        means = self.trainer.strategy.reduce(torch.stack(self._pending).mean(0), reduce_op="mean")
        self._pending.clear()
        self.schedule.observe(self._pending_step, means[0], means[1])

    @torch.no_grad()
    def _initialize_scale(self, x: Tensor) -> None:
        # The untrained model's reconstruction from the posterior mean: draws no random
        # numbers, so the noise of the run is the same as without the initialisation.
        mu, _ = full_precision(self.encoder(x)).chunk(2, dim=-1)
        self.likelihood.initialize_scale(x, self._decoded_mean(mu))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Where Lightning clips in automatic optimisation: after AMP has unscaled the
        # gradients, before the step. (In automatic mode the Trainer clips by itself.)
        if not self.automatic_optimization and self.hparams.gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.hparams.gradient_clip_val,
                gradient_clip_algorithm=self.hparams.gradient_clip_algorithm or "norm",
            )

    def writes_step_metrics(self, batch_idx: int) -> bool:
        """Whether the training_step of batch ``batch_idx`` writes its metrics to the loggers:
        on the steps Lightning would, every trainer.log_every_n_steps optimisation steps (its
        own test counts the batches that stepped, = global_step), and every step of a
        fast_dev_run; with trainer.accumulate_grad_batches, on the batch whose optimiser
        step completes the accumulation (once per optimisation step, as Lightning)."""
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches
        if (
            accumulate > 1
            and (batch_idx + 1) % accumulate
            and (batch_idx + 1 != trainer.num_training_batches)
        ):
            return False  # a micro-batch whose gradient waits for the next ones
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (self.global_step + 1) % every == 0)

    def _write_to_loggers(self, metrics: dict[str, Any], step: int) -> None:
        """Writes metrics to the Trainer's loggers, as Lightning writes what ``self.log``
        collected: tensors as Python numbers, an ``epoch`` column, one ``log_metrics`` and
        ``save`` per logger (the same rows and steps), through the loggers' public API.
        ``self.log`` itself costs ~0.35 ms per call (~2 ms for the training metrics) and
        reduces nothing here: the step values are logged as they are, the epoch means come
        from the tracker. These metrics go to the loggers only, not to
        ``trainer.callback_metrics`` (which holds what ``self.log`` logs: val/ and test/)."""
        loggers = self.trainer.loggers
        if not loggers:
            return
        scalars = {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
        scalars["epoch"] = self.current_epoch
        for logger in loggers:
            logger.log_metrics(scalars, step=step)
            logger.save()

    def on_train_epoch_end(self) -> None:
        self._flush()
        means = self._tracker.epoch_means()
        if means is not None:
            # Lightning writes epoch-end metrics at the step of the epoch's last batch.
            self._write_to_loggers(
                {f"train/{k}_epoch": v for k, v in means.items()},
                step=self.global_step - 1,
            )

    def on_train_end(self) -> None:
        self._flush()  # training stopped mid-epoch (max_steps, max_time)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        out = with_elbo(self._step_terms(batch))
        b = batch.shape[0]
        for k in TRAIN_METRICS:
            self.log(f"val/{k}", out[k], batch_size=b, sync_dist=True, prog_bar=k == "elbo")
        self._log_scale("val/", b)  # the scale evaluation uses (running σ* for `optimal`)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        scale_params = self.likelihood.scale_parameters()
        if self.likelihood.scale_lr is None or not scale_params:
            return build_optimizer(self.parameters(), self.hparams.optimizer)
        # A learned scale gets its own learning rate: Adam moves a parameter by about lr per
        # step whatever its gradient, so at the networks' lr a scalar log σ needs ~|log σ*|/lr
        # steps to reach its optimum (docs/results-and-figures.md, "Learned scales").
        ids = {id(p) for p in scale_params}
        others = [p for p in self.parameters() if id(p) not in ids]
        groups = [{"params": others}, {"params": scale_params, "lr": self.likelihood.scale_lr}]
        return build_optimizer(groups, self.hparams.optimizer)

    # --- test: sums over examples, reduced across ranks, divided by the true count -------------
    def on_test_epoch_start(self) -> None:
        self._test_sums = {}

    def _accumulate(self, name: str, value: Tensor) -> None:
        value = value.detach().double()
        self._test_sums[name] = self._test_sums.get(name, 0) + value

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        est = importance_estimates(
            batch,
            self.encoder,
            self.decoder,
            self.likelihood,
            k=self.hparams.iwae_k,
            chunk_size=self.hparams.iwae_chunk,
        )
        # Reconstructions are decoded from the posterior mean, x̂ = E[x | z = E_q[z]].
        mu = est.posterior.mu
        x_hat = self._decoded_mean(mu)
        d = math.prod(self.shape)
        self._accumulate("count", torch.tensor(float(batch.shape[0]), device=batch.device))
        self._accumulate("rec_nll", est.rec_nll.sum())
        self._accumulate("kl", est.kl.sum())
        self._accumulate("nll", -est.log_px.sum())
        sq, absolute = (x_hat - batch).pow(2), (x_hat - batch).abs()
        self._accumulate("mse", sq.sum() / d)
        self._accumulate("mae", absolute.sum() / d)
        # Per-pixel sums, for how far the scale is from the residual scale (scale_ratio).
        self._accumulate("sq_pixel", sq.sum(0))
        self._accumulate("abs_pixel", absolute.sum(0))
        self._accumulate("mu_sum", mu.sum(0))
        self._accumulate("mu_sq_sum", mu.pow(2).sum(0))

    def on_test_epoch_end(self) -> None:
        strategy = self.trainer.strategy
        sums = {k: strategy.reduce(v, reduce_op="sum") for k, v in self._test_sums.items()}
        n = sums.pop("count")
        mean = {k: v / n for k, v in sums.items()}
        variance = (mean.pop("mu_sq_sum") - mean.pop("mu_sum").pow(2)).clamp_min(0)
        ratio = self.likelihood.scale_ratio(mean.pop("sq_pixel"), mean.pop("abs_pixel"))
        metrics = {
            "test/rec_nll": mean["rec_nll"],
            "test/kl": mean["kl"],
            "test/elbo": -mean["rec_nll"] - mean["kl"],
            "test/nll": mean["nll"],
            "test/mse": mean["mse"],
            "test/mae": mean["mae"],
            "test/active_units": (variance > self.hparams.active_units_threshold).sum().double(),
            "test/n_examples": n,
        }
        if ratio is not None:
            metrics["test/scale_ratio"] = ratio
        if self.hparams.report_bpd and self.likelihood.data_kind == "continuous":
            metrics["test/bpd"] = bits_per_dim(mean["nll"], math.prod(self.shape))
        metrics.update(self.summary_metrics())
        for k, v in metrics.items():  # already reduced: identical on every rank
            self.log(k, float(v), batch_size=1, sync_dist=True)

    # --- summaries ---------------------------------------------------------------------------
    def summary_metrics(self) -> dict[str, float]:
        """Scale in force and β / effective β (for results.json): at the step of the weights,
        the current step, or, in a test of a loaded checkpoint (the run's ``best.ckpt``, an
        evaluation in a fresh Trainer), the checkpoint's step."""
        out: dict[str, float] = {}
        scale = self.likelihood.scale()
        if scale is not None:
            out["scale"] = float(scale)
        try:
            tested = self._checkpoint_step is not None and self.trainer.testing
        except RuntimeError:  # not attached to a Trainer (a module loaded in a notebook)
            tested = False
        beta = self.schedule.beta_at(self._checkpoint_step if tested else self.global_step)
        out["beta"] = beta
        out.update(effective_beta(self.likelihood, beta))
        return out

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """x̂ = E[x | z = E_q[z|x]] for a batch, shaped like x."""
        mu, _ = full_precision(self.encoder(x)).chunk(2, dim=-1)
        return self._decoded_mean(mu)

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """E[x | z] for n draws z ~ N(0, I) (means, not noisy draws), shape [n, C, H, W]."""
        z = torch.randn(n, self.latent_dim, generator=generator)  # float32, on the CPU
        dtype = next(self.decoder.parameters(), z).dtype  # float64 under trainer.precision=64
        return self._decoded_mean(z.to(device=self.device, dtype=dtype))

    def _decoded_mean(self, z: Tensor) -> Tensor:
        """E[x | z], from the decoder's output in float32 at least (see full_precision)."""
        return self.likelihood.mean(full_precision(self.decoder(z)))

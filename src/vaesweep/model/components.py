"""Pluggable components: every likelihood, β schedule and network is chosen by ``_target_``.

A component's config group (``likelihood``, ``beta_schedule``, ``model``) names a class by
its import path in ``_target_``, Hydra's instantiation convention (as in
lightning-hydra-template); ``name`` is the short label used in tags, tables and figures;
every other key is an option of the class's constructor::

    # my_configs/likelihood/student_t.yaml
    _target_: my_package.StudentTLikelihood
    name: student_t
    dof: 4.0

Built-in components are selected the same way (``vaesweep/conf/likelihood/gaussian.yaml``
holds ``_target_: vaesweep.model.likelihoods.GaussianLikelihood``), so a user's class goes through
the same path and gets the same checks: the class must import and subclass the group's
base class (:class:`~vaesweep.model.likelihoods.Likelihood`,
:class:`~vaesweep.model.schedules.BetaSchedule`, :class:`~vaesweep.model.networks.Network`); unknown
options are refused with the accepted ones listed; required options must be given; the
constructor's own ``ValueError`` is reported under the group's key. All of this happens
when the config is validated, before any data are loaded.

Classes are imported and called here, as ``hydra.utils.instantiate`` would, so that an
import or option error is one message naming the config key (Hydra's ``get_class`` also
logs its own multi-line error).

The :class:`~vaesweep.model.module.VAE` takes built components (objects, not configs); a
component built here remembers its config (:func:`config_of`), which the VAE keeps in its
checkpoints' hyperparameters so that ``VAE.load_from_checkpoint`` can build it again
(:func:`build_components`, the driver's path too).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import re
import traceback
from typing import Any

import torch

from vaesweep.model.likelihood_base import Likelihood
from vaesweep.model.likelihoods import LIKELIHOODS
from vaesweep.model.networks import Network
from vaesweep.model.schedules import SCHEDULES, BetaSchedule

#: Keys of a component's config that are not constructor options, per group: the class,
#: its label, and the likelihood's opt-in to non-binary data for a Bernoulli.
META_KEYS: dict[str, tuple[str, ...]] = {
    "likelihood": ("_target_", "name", "allow_nonbinary"),
    "beta_schedule": ("_target_", "name"),
    "model": ("_target_", "name"),
}
#: Arguments the caller passes positionally (not config options), per group.
CONTEXT_ARGS: dict[str, tuple[str, ...]] = {
    "likelihood": ("shape",),
    "beta_schedule": (),
    "model": (),
}
#: The optimisers of ``optimizer.name`` (the config's other keys are their options).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
#: Built-in classes by name, for configs written before components had ``_target_``
#: (results and checkpoints of earlier versions); new configs always carry ``_target_``.
LEGACY_TARGETS: dict[str, dict[str, str]] = {
    "likelihood": {
        "bernoulli": "vaesweep.model.likelihoods.BernoulliLikelihood",
        "continuous_bernoulli": "vaesweep.model.likelihoods.ContinuousBernoulliLikelihood",
        "gaussian": "vaesweep.model.likelihoods.GaussianLikelihood",
        "laplace": "vaesweep.model.likelihoods.LaplaceLikelihood",
    },
    "beta_schedule": {
        name: f"vaesweep.model.schedules.{cls}"
        for name, cls in (
            ("constant", "ConstantBeta"),
            ("linear", "LinearWarmup"),
            ("sigmoid", "SigmoidWarmup"),
            ("cyclical", "CyclicalBeta"),
            ("capacity", "CapacityAnnealing"),
            ("geco", "GECO"),
            ("pi", "PIController"),
        )
    },
    "model": {"mlp": "vaesweep.model.networks.MLP", "conv": "vaesweep.model.networks.Conv"},
}


#: The base class a component of each group must subclass.
BASES: dict[str, type] = {
    "likelihood": Likelihood,
    "beta_schedule": BetaSchedule,
    "model": Network,
}
#: Where the built-in components lived before the package was split into layers: a stored
#: config (results.json, a checkpoint's hyperparameters) naming the old path still compares
#: equal to, and builds, today's class.
MOVED_MODULES = {
    f"vaesweep.{name}.": f"vaesweep.model.{name}."
    for name in ("likelihoods", "schedules", "networks")
}


def _base(group: str) -> type:
    if group not in BASES:
        raise KeyError(f"no component group {group!r}: one of {sorted(META_KEYS)}")
    return BASES[group]


def current_target(target: str) -> str:
    """``target`` with a built-in class's pre-layers module path replaced by today's."""
    for old, new in MOVED_MODULES.items():
        if target.startswith(old):
            return new + target[len(old) :]
    return target


def target_of(group: str, options: dict[str, Any]) -> str:
    """The import path a component config selects (``_target_``, or a legacy built-in name)."""
    target = options.get("_target_")
    if isinstance(target, str):
        target = current_target(target)
    if target is None:
        name = options.get("name")
        target = LEGACY_TARGETS[group].get(name) if isinstance(name, str) else None
        if target is None:
            raise ValueError(
                f"{group}._target_ is not set: give the import path of a "
                f"{_base(group).__name__} subclass, e.g. {group}._target_=my_module.MyClass, "
                f"or choose a built-in: {group}={'|'.join(LEGACY_TARGETS[group])}"
            )
    return target


def locate(path: str) -> Any:
    """The object at a dotted import path ``package.module.Name`` (nested names allowed)."""
    parts = path.split(".")
    if not path or not all(p.isidentifier() for p in parts):
        raise ImportError(f"{path!r} is not a dotted import path")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not module_name.startswith(e.name):
                raise  # the module exists but imports something missing: report that
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                raise ImportError(f"module {module_name!r} has no attribute {attribute!r}")
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


def component_class(group: str, options: dict[str, Any]) -> type:
    """The class a component config selects, checked to subclass the group's base class."""
    target = target_of(group, options)
    base = _base(group)
    try:
        cls = locate(target)
    except Exception as e:  # ImportError, or whatever importing the user's module raised
        raise ValueError(
            f"{group}._target_={target!r} cannot be imported: {type(e).__name__}: {e}. "
            "Check the module is importable (installed, or on PYTHONPATH) and the class name"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(
            f"{group}._target_={target!r} is not a subclass of {base.__module__}.{base.__name__}"
        )
    _check_name(group, options, cls)
    if group == "likelihood":
        _check_likelihood_class(target, cls)
    return cls


def _check_name(group: str, options: dict[str, Any], cls: type) -> None:
    """``name`` labels the component (tags, tables, figures) but the class computes: a
    ``name`` that is not the class's own would label results with another component's
    name (``model.name=conv`` with the MLP), so it is refused; so is a missing one."""
    name = options.get("name")
    own = cls.__dict__.get("name")  # the class's own name, not one inherited from a built-in
    if not name:
        suggestion = own or cls.__name__.lower()
        raise ValueError(
            f"{group}.name is not set: give the component the short name its results are "
            f"labelled with, e.g. {group}.name={suggestion}"
        )
    if own and name != own:
        raise ValueError(
            f"{group}.name={name!r} is invalid: it labels results, and {group}._target_ "
            f"selects {cls.__module__}.{cls.__qualname__}, whose name is {own!r}. Choose "
            f"a component with the group ({group}={name}), or set {group}._target_ to its class"
        )


def _check_likelihood_class(target: str, cls: type) -> None:
    """The class attributes the driver reads from a likelihood before building it."""
    kind = getattr(cls, "data_kind", None)
    if kind not in ("binary", "continuous"):
        raise ValueError(
            f"likelihood._target_={target!r} is invalid: its class must declare data_kind = "
            f"'binary' or 'continuous' (it has {kind!r})"
        )
    channels = getattr(cls, "param_channels", None)
    if not (isinstance(channels, int) and not isinstance(channels, bool) and channels >= 1):
        raise ValueError(
            f"likelihood._target_={target!r} is invalid: its class must declare "
            f"param_channels, an int >= 1 (decoder outputs per data channel; it has "
            f"{channels!r})"
        )
    # The VAE scores with log_prob (nll defaults to −log_prob) and reconstructs with mean;
    # both default to distribution(params), which the base class leaves unimplemented. A
    # class with neither would train and then fail at test time (mean), so it is refused.
    if cls.distribution is Likelihood.distribution:
        missing = [m for m in ("log_prob", "mean") if getattr(cls, m) is getattr(Likelihood, m)]
        if missing:
            methods = " and ".join(f"{m}(...)" for m in missing)
            raise ValueError(
                f"likelihood._target_={target!r} is invalid: its class {cls.__qualname__} "
                f"implements neither distribution(params) nor {methods}, which vaesweep "
                f"calls. Implement distribution(params) (a torch Distribution with event "
                f"shape (C, H, W); log_prob, mean and sample default to it), or {methods}"
            )


def accepted_options(group: str, cls: type) -> list[str]:
    """The option names ``cls``'s constructor accepts (besides the context arguments)."""
    skip = {"self", *CONTEXT_ARGS[group]}
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name
        for p in parameters
        if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def constructor_options(group: str, options: dict[str, Any]) -> dict[str, Any]:
    """A component config without the keys that are not constructor options."""
    return {k: v for k, v in options.items() if k not in META_KEYS[group]}


def build(group: str, options: dict[str, Any], *context: Any) -> Any:
    """The component a config selects, built with ``context`` (e.g. the data shape) and its
    options. Every problem is a ValueError whose message names the config keys."""
    cls = component_class(group, options)
    kwargs = constructor_options(group, options)
    name = options["name"]  # set: component_class checked it
    accepted = accepted_options(group, cls)
    parameters = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(
            f"{group} {name!r} has no option(s) {unknown}: accepted options are "
            f"{accepted or 'none'}"
        )
    missing = [
        p for p in accepted if p not in kwargs and parameters[p].default is parameters[p].empty
    ]
    if missing:
        raise ValueError(
            f"{group} {name!r} needs option(s) {missing}: accepted options are {accepted}"
        )
    component = cls(*context, **kwargs)
    # Remembered for config_of; not for a class whose instances refuse new attributes.
    with contextlib.suppress(AttributeError):
        component.built_from = copy.deepcopy(dict(options))
    return component


def checked_build(group: str, options: dict[str, Any], *context: Any) -> Any:
    """:func:`build`, for the checks before a run: every problem is a ValueError under the
    group's keys, a constructor's ``"key=value ..."`` message with the key made a full
    config path (``likelihood.dof=-1 is invalid: ...``), and any other exception the
    constructor raises (a user's class: a TypeError from ``float([1])``) named with the
    class, the options and where it was raised."""
    try:
        return build(group, options, *context)
    except ValueError as e:
        message = str(e)
        raise ValueError(f"{group}.{message}" if re.match(r"^\w+=", message) else message) from None
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise ValueError(
            f"{group}._target_={target_of(group, options)!r} cannot be built from its "
            f"options {constructor_options(group, options)}: the constructor raised "
            f"{type(e).__name__}: {e} ({where.filename}, line {where.lineno})"
        ) from e


def config_of(component: Any) -> dict[str, Any] | None:
    """The config a component was built from by :func:`build` (a copy), or None for one
    built otherwise (e.g. ``GaussianLikelihood(shape, scale="learned")`` in a notebook)."""
    config = getattr(component, "built_from", None)
    return copy.deepcopy(config) if isinstance(config, dict) else None


def class_path(component: Any) -> str:
    """The import path of a component's class (``package.module.Class``)."""
    cls = type(component)
    return f"{cls.__module__}.{cls.__qualname__}"


def build_components(
    shape: tuple[int, int, int],
    likelihood: dict[str, Any],
    schedule: dict[str, Any],
    model: dict[str, Any],
) -> dict[str, Any]:
    """The VAE's components from the configs of the ``likelihood``, ``beta_schedule`` and
    ``model`` groups, for the data shape (C, H, W): ``{"likelihood", "schedule", "network"}``,
    the VAE's keyword arguments. Built in that order (none of the built-in constructors draws
    random numbers; the VAE builds the encoder and decoder, whose initial weights do)."""
    built = {"likelihood": build("likelihood", likelihood, tuple(shape))}
    built["network"] = build("model", model)
    built["schedule"] = build("beta_schedule", schedule)
    return {key: built[key] for key in ("likelihood", "schedule", "network")}


def build_named(group: str, registry: dict[str, type], name: str, *context: Any, **options: Any):
    """A built-in component by its registry name (the API's shortcut for ``{group}={name}``),
    through the same path as a config's ``_target_``."""
    if name not in registry:
        raise ValueError(f"{group}={name!r} is unknown: choose one of {sorted(registry)}")
    cls = registry[name]
    target = f"{cls.__module__}.{cls.__qualname__}"
    return build(group, {"_target_": target, "name": name, **options}, *context)


def with_targets(config: dict[str, Any]) -> dict[str, Any]:
    """A stored run config with ``_target_`` filled in where an earlier version named a
    built-in component only by ``name`` (so that it compares equal to today's config)."""
    out = dict(config)
    for group, targets in LEGACY_TARGETS.items():
        options = out.get(group)
        if isinstance(options, dict) and isinstance(options.get("_target_"), str):
            out[group] = {**options, "_target_": current_target(options["_target_"])}
        elif isinstance(options, dict) and "_target_" not in options:
            target = targets.get(options.get("name"))
            if target is not None:
                out[group] = {"_target_": target, **options}
    return out


def likelihood_options(name: str) -> list[str]:
    """Option names accepted by the built-in likelihood ``name`` (besides the data shape)."""
    return accepted_options("likelihood", LIKELIHOODS[name])


def build_likelihood(name: str, shape: tuple[int, int, int], **options: object) -> Likelihood:
    """A built-in likelihood by name, for the data shape (C, H, W), with options; the same
    path as a config's ``likelihood._target_``."""
    return build_named("likelihood", LIKELIHOODS, name, shape, **options)


def schedule_options(name: str) -> list[str]:
    """Option names accepted by the built-in β schedule ``name``."""
    return accepted_options("beta_schedule", SCHEDULES[name])


def build_schedule(name: str, **options: object) -> BetaSchedule:
    """A built-in β schedule by name, with options; the same path as a config's
    ``beta_schedule._target_``."""
    return build_named("beta_schedule", SCHEDULES, name, **options)

"""Encoder and decoder networks for C×H×W images.

The encoder maps an image to the parameters of a diagonal Gaussian posterior q(z|x): its
output is [mean ‖ log-variance], 2*latent_dim numbers per example, and the caller splits it.

The decoder maps a latent z to the raw (unconstrained) parameters of p(x|z), one image-shaped
block per parameter: out[..., p*C:(p+1)*C, :, :] is parameter p (p=0 mean or logits, p=1
log-scale when param_channels=2). There is no final activation; the likelihood constrains
its own parameters.

Two kinds, picked by name:
- "mlp": flatten → Linear/activation stack (hidden default (400,): one hidden layer, as in
  Kingma & Welling's MNIST experiments; 400 units as in PyTorch's VAE example) → Linear.
- "conv": Conv2d(kernel 4, stride 2, padding 1) layers, each halving H and W (floor), →
  flatten → Linear stack. The decoder mirrors it: Linear stack → reshape to
  (channels[-1], ceil(H/2^L), ceil(W/2^L)) → ConvTranspose2d(kernel 4, stride 2, padding 1)
  layers, each doubling H and W exactly, → crop the top-left H×W. The crop is what makes
  sizes that are not multiples of 2^L work (two layers: 28 → 14 → 7 and 7 → 14 → 28;
  7 → 3 → 1 and 2 → 4 → 8, cropped to 7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from vaesweep.core.checks import require

NETWORKS = ("mlp", "conv")
#: The config options each network kind reads (besides its name).
NETWORK_OPTIONS = {
    "mlp": ("latent_dim", "hidden", "activation"),
    "conv": ("latent_dim", "hidden", "channels", "activation"),
}


def network_unread_options(kind: str, options: dict) -> dict[str, str]:
    """Options of a model config that the network ``kind`` does not read, with the reason
    (see ``vaesweep.run.effective``)."""
    read = NETWORK_OPTIONS.get(kind, ())
    readers = {key: [k for k, opts in NETWORK_OPTIONS.items() if key in opts] for key in options}
    return {
        key: f"it is read only with model={' or '.join(readers[key])}, and this run has "
        f"model={kind}"
        for key in options
        if key != "name" and key not in read and readers[key]
    }


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}

DEFAULT_MLP_HIDDEN = (400,)
DEFAULT_CONV_HIDDEN = (256,)
DEFAULT_CONV_CHANNELS = (32, 64)

# Every conv layer: kernel 4, stride 2, padding 1 halves (floor) in the encoder and doubles
# exactly in the decoder.
_KERNEL, _STRIDE, _PADDING = 4, 2, 1


class Encoder(nn.Module):
    """q(z|x) network: x [..., C, H, W] → [..., 2*latent_dim] (posterior mean ‖ log-variance)."""

    def __init__(self, kind: str, shape: tuple[int, int, int], latent_dim: int, body: nn.Module):
        super().__init__()
        self.kind = kind
        self.shape = shape
        self.latent_dim = latent_dim
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        """x [..., C, H, W] float → [..., 2*latent_dim]."""
        if x.dim() < 4 or tuple(x.shape[-3:]) != self.shape:
            raise ValueError(
                f"encoder input must have shape [B, C, H, W] with (C, H, W) = {self.shape}, "
                f"got {tuple(x.shape)}"
            )
        if x.dim() == 4:  # a batch [B, C, H, W]: no reshapes (they cost autograd nodes)
            return self.body(x)
        lead = x.shape[:-3]
        out = self.body(x.reshape(-1, *self.shape))
        return out.reshape(*lead, 2 * self.latent_dim)


class Decoder(nn.Module):
    """p(x|z) network: z [..., latent_dim] → raw parameters [..., param_channels*C, H, W]."""

    def __init__(
        self,
        kind: str,
        shape: tuple[int, int, int],
        latent_dim: int,
        param_channels: int,
        body: nn.Module,
    ):
        super().__init__()
        self.kind = kind
        self.shape = shape
        self.latent_dim = latent_dim
        self.param_channels = param_channels
        self.body = body

    def forward(self, z: Tensor) -> Tensor:
        """z [..., latent_dim] (e.g. [B, d] or [K, B, d]) → [..., param_channels*C, H, W]."""
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"decoder input must have last dimension latent_dim={self.latent_dim}, "
                f"got shape {tuple(z.shape)}"
            )
        if z.dim() == 2:  # a batch [B, d]: no reshapes (they cost autograd nodes)
            return self.body(z)
        c, h, w = self.shape
        lead = z.shape[:-1]
        out = self.body(z.reshape(-1, self.latent_dim))
        return out.reshape(*lead, self.param_channels * c, h, w)


class _Crop(nn.Module):
    """[B, C, H0, W0] → top-left [B, C, H, W] with H ≤ H0, W ≤ W0."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height = height
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        return x[..., : self.height, : self.width]

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"


def build_encoder(
    kind: str,
    shape: tuple[int, int, int],
    latent_dim: int,
    hidden: Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
    activation: str = "relu",
) -> Encoder:
    """Encoder x [B, C, H, W] → [B, 2*latent_dim]; first half mean, second half log-variance.

    hidden: Linear widths (default (400,) for mlp, (256,) for conv after flattening; may be
    empty). channels: conv only (default (32, 64)), one stride-2 layer each; ignored by mlp.
    """
    shape, hidden, channels, act = _validate(kind, shape, latent_dim, hidden, channels, activation)
    c, h, w = shape
    layers: list[nn.Module] = []
    if kind == "mlp":
        width = c * h * w
        layers.append(nn.Flatten())
    else:
        in_ch = c
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, _KERNEL, _STRIDE, _PADDING), act()]
            in_ch = out_ch
        depth = 2 ** len(channels)
        width = channels[-1] * (h // depth) * (w // depth)
        layers.append(nn.Flatten())
    for size in hidden:
        layers += [nn.Linear(width, size), act()]
        width = size
    layers.append(nn.Linear(width, 2 * latent_dim))
    return Encoder(kind, shape, latent_dim, nn.Sequential(*layers))


def build_decoder(
    kind: str,
    shape: tuple[int, int, int],
    latent_dim: int,
    param_channels: int,
    hidden: Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
    activation: str = "relu",
) -> Decoder:
    """Decoder z [..., latent_dim] → raw [..., param_channels*C, H, W], grouped by parameter.

    hidden and channels are given in encoder order (input side first) and mirrored here, so
    the same config builds a symmetric pair. No final activation.
    """
    shape, hidden, channels, act = _validate(kind, shape, latent_dim, hidden, channels, activation)
    if not _is_positive_int(param_channels):
        raise ValueError(f"param_channels must be an int >= 1, got {param_channels!r}")
    c, h, w = shape
    out_ch = param_channels * c
    layers: list[nn.Module] = []
    width = latent_dim
    for size in reversed(hidden):
        layers += [nn.Linear(width, size), act()]
        width = size
    if kind == "mlp":
        layers += [nn.Linear(width, out_ch * h * w), nn.Unflatten(1, (out_ch, h, w))]
    else:
        depth = 2 ** len(channels)
        h0, w0 = math.ceil(h / depth), math.ceil(w / depth)
        layers += [
            nn.Linear(width, channels[-1] * h0 * w0),
            act(),
            nn.Unflatten(1, (channels[-1], h0, w0)),
        ]
        targets = [*reversed(channels[:-1]), out_ch]
        in_ch = channels[-1]
        for i, target in enumerate(targets):
            layers.append(nn.ConvTranspose2d(in_ch, target, _KERNEL, _STRIDE, _PADDING))
            if i < len(targets) - 1:
                layers.append(act())
            in_ch = target
        layers.append(_Crop(h, w))
    return Decoder(kind, shape, latent_dim, param_channels, nn.Sequential(*layers))


def _validate(
    kind: str,
    shape: Sequence[int],
    latent_dim: int,
    hidden: Sequence[int] | None,
    channels: Sequence[int] | None,
    activation: str,
) -> tuple[tuple[int, int, int], tuple[int, ...], tuple[int, ...], type[nn.Module]]:
    """Check shared arguments; return (shape, hidden, channels, activation class) with defaults."""
    if kind not in NETWORKS:
        raise ValueError(f"kind must be one of {NETWORKS}, got {kind!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if not _is_positive_int(latent_dim):
        raise ValueError(f"latent_dim must be an int >= 1, got {latent_dim!r}")
    shape_t = tuple(shape) if isinstance(shape, Sequence) else ()
    if len(shape_t) != 3 or not all(_is_positive_int(s) for s in shape_t):
        raise ValueError(f"shape must be (C, H, W) with positive ints, got {shape!r}")
    if hidden is None:
        hidden = DEFAULT_MLP_HIDDEN if kind == "mlp" else DEFAULT_CONV_HIDDEN
    hidden_t = _int_tuple("hidden", hidden, allow_empty=True)
    channels_t: tuple[int, ...] = ()
    if kind == "conv":
        channels_t = _int_tuple(
            "channels",
            DEFAULT_CONV_CHANNELS if channels is None else channels,
            allow_empty=False,
        )
        _, h, w = shape_t
        depth = 2 ** len(channels_t)
        # Each stride-2 layer needs an input of at least 2 pixels to produce 1, so L layers
        # need H, W >= 2^L.
        if h < depth or w < depth:
            raise ValueError(
                f"shape {shape_t} is too small for {len(channels_t)} stride-2 conv layers "
                f"(channels={channels_t}): H and W must be >= 2**{len(channels_t)} = {depth}; "
                f"use fewer channels entries or kind='mlp'"
            )
    return shape_t, hidden_t, channels_t, ACTIVATIONS[activation]  # type: ignore[return-value]


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _int_tuple(name: str, values: Sequence[int], allow_empty: bool) -> tuple[int, ...]:
    """Sequence of positive ints as a tuple, or ValueError naming the argument."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        values_t: tuple = ()
        ok = False
    else:
        values_t = tuple(values)
        ok = all(_is_positive_int(v) for v in values_t) and (allow_empty or len(values_t) > 0)
    if not ok:
        need = "a sequence" if allow_empty else "a non-empty sequence"
        raise ValueError(f"{name} must be {need} of positive ints, got {values!r}")
    return values_t


class Network:
    """The ``model`` group's component: builds the encoder and the decoder for a data shape.

    Subclass it for a network of your own and select it with ``model._target_`` (see
    :mod:`vaesweep.model.components`); the other keys of the model config are the constructor's
    options, and ``latent_dim`` is required:

    - ``encoder(shape)``: a module x [B, C, H, W] → [B, 2·latent_dim], the mean then the
      log-variance of q(z|x);
    - ``decoder(shape, param_channels)``: a module z [..., latent_dim] →
      [..., param_channels·C, H, W], the likelihood's raw parameters grouped by parameter
      (no final activation: the likelihood constrains its own parameters).

    The constructor checks the options that do not depend on the data (a ValueError whose
    message starts with ``key=value``); shape-dependent checks happen when building.
    """

    name: ClassVar[str] = ""
    #: What to use instead of a config key this network does not read: {key: hint}.
    hints: ClassVar[dict[str, str]] = {}

    def __init__(self, latent_dim: int) -> None:
        require(_is_positive_int(latent_dim), "latent_dim", latent_dim, "an int > 0")
        self.latent_dim = int(latent_dim)

    @classmethod
    def unread_options(cls, options: dict[str, Any]) -> dict[str, str]:
        """Options of its config that change nothing this network computes, with the reason
        (:mod:`vaesweep.run.effective`); none by default."""
        return {}

    def encoder(self, shape: tuple[int, int, int]) -> nn.Module:
        raise NotImplementedError

    def decoder(self, shape: tuple[int, int, int], param_channels: int) -> nn.Module:
        raise NotImplementedError


class _BuiltinNetwork(Network):
    """The built-in fully connected and convolutional networks (see the module docstring)."""

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int] | None = None,
        channels: Sequence[int] | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__(latent_dim)
        require(
            isinstance(activation, str) and activation in ACTIVATIONS,
            "activation",
            activation,
            f"one of {list(ACTIVATIONS)}",
        )
        self.hidden, self.channels, self.activation = hidden, channels, activation

    @classmethod
    def unread_options(cls, options: dict[str, Any]) -> dict[str, str]:
        return network_unread_options(cls.name, options)

    def _options(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "channels": self.channels, "activation": self.activation}

    def encoder(self, shape: tuple[int, int, int]) -> Encoder:
        return build_encoder(self.name, shape, self.latent_dim, **self._options())

    def decoder(self, shape: tuple[int, int, int], param_channels: int) -> Decoder:
        return build_decoder(self.name, shape, self.latent_dim, param_channels, **self._options())


class MLP(_BuiltinNetwork):
    """``model=mlp``: flatten → Linear/activation stack → Linear (``channels`` unread)."""

    name = "mlp"


class Conv(_BuiltinNetwork):
    """``model=conv``: stride-2 convolutions → Linear stack, mirrored in the decoder."""

    name = "conv"


__all__ = [
    "MLP",
    "Conv",
    "Network",
    "ACTIVATIONS",
    "NETWORKS",
    "NETWORK_OPTIONS",
    "Decoder",
    "Encoder",
    "build_decoder",
    "build_encoder",
    "network_unread_options",
]

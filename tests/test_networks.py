"""Encoder/decoder shapes, leading-dim handling, gradient flow and argument errors."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vaesweep.model.networks import ACTIVATIONS, NETWORKS, build_decoder, build_encoder

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32)]


@pytest.mark.parametrize("kind", NETWORKS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("param_channels", [1, 2])
def test_output_shapes(kind, shape, param_channels):
    torch.manual_seed(0)
    c, h, w = shape
    enc = build_encoder(kind, shape, latent_dim=5)
    dec = build_decoder(kind, shape, latent_dim=5, param_channels=param_channels)
    x = torch.rand(4, c, h, w)
    assert enc(x).shape == (4, 10)
    assert dec(torch.randn(4, 5)).shape == (4, param_channels * c, h, w)


@pytest.mark.parametrize(
    ("shape", "channels"),
    [((1, 7, 7), (8, 16)), ((3, 5, 9), (4, 8)), ((1, 8, 8), (4, 8, 16)), ((2, 13, 6), (4,))],
)
def test_conv_sizes_not_multiple_of_stride(shape, channels):
    c, h, w = shape
    enc = build_encoder("conv", shape, 3, channels=channels, hidden=())
    dec = build_decoder("conv", shape, 3, 2, channels=channels, hidden=())
    assert enc(torch.rand(2, c, h, w)).shape == (2, 6)
    assert dec(torch.randn(2, 3)).shape == (2, 2 * c, h, w)


@pytest.mark.parametrize("kind", NETWORKS)
def test_decoder_leading_dims_match_flat_batch(kind):
    torch.manual_seed(0)
    dec = build_decoder(kind, (1, 8, 8), latent_dim=3, param_channels=2)
    z = torch.randn(5, 4, 3)
    out = dec(z)
    assert out.shape == (5, 4, 2, 8, 8)
    flat = dec(z.reshape(20, 3))
    torch.testing.assert_close(out, flat.reshape(5, 4, 2, 8, 8))
    # The k-th importance sample of example b is decoded independently of the others.
    torch.testing.assert_close(out[2, 1], dec(z[2, 1].unsqueeze(0))[0])
    assert dec(torch.randn(3)).shape == (2, 8, 8)


@pytest.mark.parametrize("kind", NETWORKS)
def test_encoder_examples_are_independent(kind):
    torch.manual_seed(0)
    enc = build_encoder(kind, (3, 8, 8), latent_dim=4)
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(enc(x)[1], enc(x[1:2])[0])


@pytest.mark.parametrize("kind", NETWORKS)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_gradients_reach_every_parameter(kind, activation):
    torch.manual_seed(0)
    shape = (3, 8, 8)
    enc = build_encoder(kind, shape, 4, hidden=(16, 8), channels=(4, 8), activation=activation)
    dec = build_decoder(kind, shape, 4, 2, hidden=(16, 8), channels=(4, 8), activation=activation)
    out = enc(torch.rand(6, *shape))
    mean, logvar = out.chunk(2, dim=-1)
    z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
    loss = dec(z).square().mean() + out.square().mean()
    loss.backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_decoder_output_is_unconstrained():
    # No final activation: raw outputs take both signs and leave [0, 1].
    torch.manual_seed(0)
    for kind in NETWORKS:
        out = build_decoder(kind, (1, 8, 8), 2, 1)(3 * torch.randn(64, 2))
        assert out.min() < 0 < out.max()


def test_mlp_defaults_follow_kingma_welling():
    enc = build_encoder("mlp", (1, 28, 28), 20)
    dec = build_decoder("mlp", (1, 28, 28), 20, 1)
    enc_linear = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    dec_linear = [m for m in dec.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in enc_linear] == [(784, 400), (400, 40)]
    assert [(m.in_features, m.out_features) for m in dec_linear] == [(20, 400), (400, 784)]
    assert any(isinstance(m, nn.ReLU) for m in enc.modules())


def test_hidden_is_mirrored_in_decoder_and_may_be_empty():
    dec = build_decoder("mlp", (1, 8, 8), 3, 1, hidden=(32, 16))
    dims = [(m.in_features, m.out_features) for m in dec.modules() if isinstance(m, nn.Linear)]
    assert dims == [(3, 16), (16, 32), (32, 64)]
    enc = build_encoder("mlp", (1, 8, 8), 3, hidden=[])
    assert [m.out_features for m in enc.modules() if isinstance(m, nn.Linear)] == [6]


def test_accepts_hydra_list_configs():
    cfg = OmegaConf.create({"shape": [1, 8, 8], "hidden": [16], "channels": [4, 8]})
    enc = build_encoder("conv", cfg.shape, 2, hidden=cfg.hidden, channels=cfg.channels)
    dec = build_decoder("conv", cfg.shape, 2, 1, hidden=cfg.hidden, channels=cfg.channels)
    assert enc(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    assert dec(torch.randn(2, 2)).shape == (2, 1, 8, 8)


def test_mlp_ignores_channels():
    enc = build_encoder("mlp", (1, 8, 8), 2, channels=(4, 8, 16, 32, 64))
    assert enc(torch.rand(1, 1, 8, 8)).shape == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"kind": "resnet"}, r"kind.*'mlp', 'conv'.*'resnet'"),
        ({"activation": "gelu"}, r"activation.*'relu'.*'leaky_relu'.*'gelu'"),
        ({"latent_dim": 0}, r"latent_dim.*0"),
        ({"latent_dim": -3}, r"latent_dim.*-3"),
        ({"latent_dim": 2.0}, r"latent_dim.*2\.0"),
        ({"shape": (28, 28)}, r"shape.*\(28, 28\)"),
        ({"shape": (1, 0, 8)}, r"shape"),
        ({"hidden": (16, 0)}, r"hidden.*\(16, 0\)"),
        ({"hidden": 16}, r"hidden.*16"),
        ({"kind": "conv", "channels": ()}, r"channels.*non-empty"),
        ({"kind": "conv", "channels": (8, -1)}, r"channels.*\(8, -1\)"),
    ],
)
@pytest.mark.parametrize("builder", ["encoder", "decoder"])
def test_bad_arguments_name_the_argument(kwargs, pattern, builder):
    args = {"kind": "mlp", "shape": (1, 8, 8), "latent_dim": 2, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        if builder == "encoder":
            build_encoder(**args)
        else:
            build_decoder(**args, param_channels=1)


@pytest.mark.parametrize("param_channels", [0, -1, 1.5, True])
def test_bad_param_channels(param_channels):
    with pytest.raises(ValueError, match="param_channels"):
        build_decoder("mlp", (1, 8, 8), 2, param_channels)


@pytest.mark.parametrize("builder", [build_encoder, build_decoder])
def test_conv_image_too_small(builder):
    extra = (1,) if builder is build_decoder else ()
    with pytest.raises(ValueError, match=r"too small.*3 stride-2.*>= 2\*\*3 = 8"):
        builder("conv", (1, 4, 8), 2, *extra, channels=(4, 8, 16))
    with pytest.raises(ValueError, match="too small"):
        builder("conv", (1, 8, 8), 2, *extra, channels=(4, 4, 4, 4))
    # Exactly 2^L pixels is the smallest size that works.
    assert builder("conv", (1, 8, 8), 2, *extra, channels=(4, 4, 4)) is not None


def test_wrong_input_shapes_are_rejected():
    enc = build_encoder("mlp", (1, 8, 8), 2)
    dec = build_decoder("mlp", (1, 8, 8), 2, 1)
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(4, 1, 28, 28\)"):
        enc(torch.rand(4, 1, 28, 28))
    with pytest.raises(ValueError, match=r"latent_dim=2.*\(4, 3\)"):
        dec(torch.randn(4, 3))

"""SSCNet variants: shapes, compression ratios, parameter counts, refusals, checkpoints."""

from __future__ import annotations

import pytest
import torch

from parsers.errors import ProductError, UserError
from training.models import (
    PAPER_VARIANTS,
    build_model,
    clean_state_dict,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)

# (variant, documented ratio, latent shape)
EXPECTED = {
    "sentinel2-linear-1000": (20.736, (1000,)),
    "virtis-linear-10000": (176.9472, (10000,)),
    "virtis-linear-5000": (353.8944, (5000,)),
    "virtis-linear-1000": (1769.472, (1000,)),
    "virtis-conv-1024x8": (27.0, (1024, 8, 8)),
    "virtis-conv-1024x16": (6.75, (1024, 16, 16)),
}


@pytest.mark.parametrize("name", list(PAPER_VARIANTS))
def test_paper_variant_ratio_and_latent_shape(name: str) -> None:
    with torch.device("meta"):  # no memory for the 330 M-parameter model
        model = build_model(**PAPER_VARIANTS[name])
    ratio, latent_shape = EXPECTED[name]
    assert model.compression_ratio == pytest.approx(ratio)
    assert model.latent_shape == latent_shape


@pytest.mark.parametrize("name", list(PAPER_VARIANTS))
def test_paper_variant_maps_shapes(name: str) -> None:
    kw = PAPER_VARIANTS[name]
    with torch.device("meta"):
        model = build_model(**kw)
        x = torch.empty(2, kw["bands"], kw["tile"], kw["tile"])
        z = model.encode(x)
        y = model.decode(z)
    assert tuple(z.shape) == (2, *model.latent_shape)
    assert y.shape == x.shape


def test_parameter_counts_are_of_the_paper_order() -> None:
    with torch.device("meta"):
        conv = count_parameters(build_model(**PAPER_VARIANTS["virtis-conv-1024x8"]))
        lin = count_parameters(build_model(**PAPER_VARIANTS["virtis-linear-10000"]))
    # Paper Table 6: ~8 M encoder, ~6.7 M decoder; linear 171 M / 168 M.
    assert 7.5e6 < conv["encoder"] < 8.5e6 and 6.2e6 < conv["decoder"] < 7.2e6
    assert 150e6 < lin["encoder"] < 190e6 and 150e6 < lin["decoder"] < 190e6
    assert conv["total"] == conv["encoder"] + conv["decoder"]


def test_small_models_run_forward_with_sigmoid_output() -> None:
    torch.manual_seed(0)
    for kw in ({"arch": "linear", "bands": 5, "tile": 16, "latent": 7},
               {"arch": "conv", "bands": 5, "tile": 16, "latent": (6, 4)},
               {"arch": "conv", "bands": 5, "tile": 16, "latent": (6, 8)},
               {"arch": "conv", "bands": 5, "tile": 16, "latent": (6, 2)}):
        model = build_model(**kw, widths=(4, 4, 4, 8))
        x = torch.rand(3, 5, 16, 16)
        y = model(x).detach()
        assert y.shape == x.shape
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        torch.testing.assert_close(torch.sigmoid(model(x, logits=True)).detach(), y)
        torch.testing.assert_close(model.decode(model.encode(x)).detach(), y)


def test_prelu_per_channel_and_per_element_in_decoder_linear() -> None:
    model = build_model(arch="linear", bands=3, tile=16, latent=10, widths=(4, 5, 6, 7))
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    enc_prelus = [m for m in model.encoder if isinstance(m, torch.nn.PReLU)]
    assert [p.num_parameters for p in enc_prelus] == [4, 5, 6, 7]
    assert model.decoder_act.num_parameters == 7 * 2 * 2
    relu = build_model(arch="linear", bands=3, tile=16, latent=10, widths=(4, 5, 6, 7),
                       activation="relu")
    assert not any(isinstance(m, torch.nn.PReLU) for m in relu.modules())
    assert count_parameters(model)["total"] - count_parameters(relu)["total"] == sum(
        p.num_parameters for p in prelus)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"arch": "linear", "bands": 9, "tile": 44, "latent": 100}, "not divisible by 8"),
        ({"arch": "linear", "bands": 9, "tile": 48, "latent": (10, 2)}, "integer latent"),
        ({"arch": "linear", "bands": 9, "tile": 48, "latent": 0}, "integer latent"),
        ({"arch": "conv", "bands": 9, "tile": 64, "latent": (1024, 5)}, "does not fit tile"),
        ({"arch": "conv", "bands": 9, "tile": 64, "latent": (1024, 64)}, "does not fit tile"),
        ({"arch": "conv", "bands": 9, "tile": 64, "latent": 1000}, r"\(channels, size\)"),
        ({"arch": "conv", "bands": 0, "tile": 64, "latent": (8, 8)}, "positive"),
        ({"arch": "mlp", "bands": 9, "tile": 64, "latent": 8}, "arch"),
        ({"arch": "linear", "bands": 9, "tile": 48, "latent": 8, "activation": "gelu"},
         "activation"),
        ({"arch": "linear", "bands": 9, "tile": 48, "latent": 8, "widths": (1, 2)}, "widths"),
    ],
)
def test_bad_shapes_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        build_model(**kw)


def test_wrong_input_shape_is_a_user_error() -> None:
    model = build_model(arch="conv", bands=4, tile=16, latent=(8, 4), widths=(2, 2, 2, 2))
    expected = r"expects tiles \(N, 4, 16, 16\).*got shape \(1, 3, 16, 16\)"
    with pytest.raises(UserError, match=expected):
        model(torch.rand(1, 3, 16, 16))
    with pytest.raises(UserError, match="decoder expects latents"):
        model.decode(torch.rand(1, 8, 2, 2))


def test_checkpoint_round_trip_and_prefix_stripping(tmp_path) -> None:
    torch.manual_seed(1)
    model = build_model(arch="linear", bands=3, tile=8, latent=5, widths=(2, 3, 4, 5))
    x = torch.rand(2, 3, 8, 8)
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "m.pt", {"config": {**model.config(), "source": "virtis"},
                                        "model": state, "epoch": 3})
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["epoch"] == 3 and ckpt["config"]["source"] == "virtis"
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert not loaded.training
    assert list(clean_state_dict({"module._orig_mod.a.b": 1})) == ["a.b"]
    assert not list(tmp_path.glob(".*tmp"))


def test_load_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(ProductError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ProductError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    model = build_model(arch="linear", bands=3, tile=8, latent=5, widths=(2, 3, 4, 5))
    cfg = {**model.config(), "latent": 6}
    save_checkpoint(tmp_path / "bad.pt", {"config": cfg, "model": model.state_dict()})
    with pytest.raises(ProductError, match="do not match"):
        load_checkpoint(tmp_path / "bad.pt")

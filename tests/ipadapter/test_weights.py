"""Weight-type math per layer (diffusers order, mid block patched) and InstantStyle expansion."""

from __future__ import annotations

import pytest

from ipgraph.nodes.ipadapter import WEIGHT_TYPES, instantstyle_weights, layer_table, layer_weights


def test_layer_tables():
    sd15 = layer_table("sd15")
    assert len(sd15) == 16 and sd15[15] == ("middle", 6) and sd15[6] == ("output", 7)
    sdxl = layer_table("sdxl")
    assert len(sdxl) == 70 and set(sdxl[60:]) == {("middle", 4)} and set(sdxl[34:44]) == {("output", 6)}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_every_type_has_one_weight_per_layer(arch):
    for wt in WEIGHT_TYPES:
        assert len(layer_weights(wt, 0.8, arch)) == (16 if arch == "sd15" else 70)
    with pytest.raises(ValueError):
        layer_weights("sideways", 1.0, arch)


def test_curves_sd15():
    w = 2.0
    ease_in = layer_weights("ease in", w, "sd15")
    assert ease_in[0] == pytest.approx(w)  # t=0
    assert ease_in[15] == pytest.approx(w * (0.05 + 0.95 * (1 - 6 / 16)))  # mid block: t=6
    assert ease_in[14] == pytest.approx(w * (0.05 + 0.95 * (1 - 15 / 16)))
    assert layer_weights("ease out", w, "sd15")[15] == pytest.approx(w * (0.05 + 0.95 * 6 / 16))
    assert layer_weights("ease in-out", w, "sd15")[15] == pytest.approx(w * (0.05 + 0.95 * (1 - 2 / 8)))
    assert layer_weights("reverse in-out", w, "sd15")[0] == pytest.approx(w)
    assert layer_weights("weak middle", w, "sd15") == (w,) * 15 + (0.2 * w,)
    assert layer_weights("strong middle", w, "sd15") == (0.2 * w,) * 15 + (w,)
    assert layer_weights("weak input", w, "sd15") == (0.2 * w,) * 6 + (w,) * 10
    assert layer_weights("weak output", w, "sd15") == (w,) * 6 + (0.2 * w,) * 9 + (w,)


def test_dict_types():
    w, wc = 1.0, 0.5
    assert layer_weights("composition", w, "sd15") == (0, 0, 0, 0, 0.25, 1.0) + (0.0,) * 10
    sc = layer_weights("style and composition", w, "sd15", weight_composition=wc)
    assert (
        sc[:6] == (1, 1, 1, 1, 0.25 * wc, wc)
        and sc[15] == 0.0
        and sc[6:8] == (0.0, 0.0)
        and sc[8:15] == (1.0,) * 7
    )
    strong = layer_weights("strong style transfer", w, "sdxl")
    assert [j for j, x in enumerate(strong) if x == 0] == list(
        range(14, 24)
    )  # only t=3 (layout) is off; mid on
    xl = layer_weights("style and composition", w, "sdxl", weight_composition=wc)
    assert {j: x for j, x in enumerate(xl) if x} == {
        **{j: wc for j in range(14, 24)},
        **{j: w for j in range(34, 44)},
    }


def test_instantstyle_mid_and_defaults(unets):
    lw = instantstyle_weights({"mid": 0.5}, unets["sd15"])
    assert lw == (0.0,) * 15 + (0.5,)
    lw = instantstyle_weights({"up": {"block_1": [0.1, 0.2, 0.3]}}, unets["sd15"])
    assert lw[6:9] == (0.1, 0.2, 0.3) and sum(lw) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        instantstyle_weights({"down": {"block_0": [1.0, 1.0, 1.0]}}, unets["sd15"])  # down blocks hold 2

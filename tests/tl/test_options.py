"""The typed options of the methods and the registry of method classes."""

from __future__ import annotations

import dataclasses

import pytest

import scvgae_sc as sv
from scvgae_sc.tl._models import GNNImputeModel, GNNImputeOptions, ImputationModel, SCVGAEModel, SCVGAEOptions
from scvgae_sc.tl._output import OUTPUT_KINDS


@pytest.mark.parametrize(
    ("cls", "documented"), [(SCVGAEOptions, sv.tl.scvgae_options), (GNNImputeOptions, sv.tl.gnnimpute_options)]
)
def test_defaults_are_the_documented_options(cls, documented):
    assert cls.defaults() == documented()
    assert cls.from_kwargs().as_dict() == documented()
    assert cls().as_dict() == documented()


def test_options_are_frozen_grouped_and_validated():
    opts = SCVGAEOptions.from_kwargs(hidden=64, mask_rate=0.2, output="recon")
    assert (opts.architecture.hidden, opts.training.mask_rate, opts.output.output) == (64, 0.2, "recon")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.architecture.hidden = 3
    assert opts.replace(hidden=32).architecture.hidden == 32 and opts.architecture.hidden == 64
    with pytest.raises(TypeError, match="Unknown option.*method='scvgae'.*hiden"):
        SCVGAEOptions.from_kwargs(hiden=3)
    with pytest.raises(ValueError, match="output must be one of"):
        GNNImputeOptions.from_kwargs(output="smooth")
    with pytest.raises(ValueError, match="split fractions must sum to 1"):
        GNNImputeOptions.from_kwargs(split=(0.5, 0.2, 0.2))
    assert set(OUTPUT_KINDS) == {"fill", "recon", "denoised"}


def test_registry_by_method_name():
    assert ImputationModel.methods() == ("scvgae", "gnnimpute")
    assert ImputationModel.registered("scvgae") is SCVGAEModel
    assert ImputationModel.registered("gnnimpute") is GNNImputeModel
    assert SCVGAEModel.options_class is SCVGAEOptions and GNNImputeModel.options_class is GNNImputeOptions
    with pytest.raises(ValueError, match=r"method must be one of \('scvgae', 'gnnimpute'\)"):
        ImputationModel.registered("magic")
    with pytest.raises(TypeError, match="base class"):
        ImputationModel(None, {}, graph=None)


def test_auto_batching_is_resolved_by_the_class():
    n, g = 1000, 100
    assert SCVGAEModel.resolve_batching("auto", n, g, "cpu", None) == "full"
    assert SCVGAEModel.resolve_batching("auto", 30_000, g, "cpu", None) == "subgraph"
    assert GNNImputeModel.resolve_batching("auto", 30_000, g, "cpu", None) == "full"
    tight = GNNImputeModel.memory(n, g) - 1
    assert GNNImputeModel.resolve_batching("auto", n, g, "cpu", tight) == "subgraph"
    assert SCVGAEModel.resolve_batching("full", n, g, "cpu", 1.0) == "full"

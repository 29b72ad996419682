"""The distillation methods' registry and the run config's option blocks agree."""

import dataclasses

import pytest

from rdd3d.core.registry import Registry
from rdd3d.distill.base import METHODS, DistillLoss, Method
from rdd3d.distill.methods import METHOD_NAMES, DistillConfig, build_method


def test_every_registered_method_has_its_typed_block_in_the_run_config():
    blocks = {field.name: field.type for field in dataclasses.fields(DistillConfig)}
    defaults = DistillConfig()
    for name, method in METHODS.items():
        assert method.block in blocks, f"DistillConfig has no block {method.block!r} for method {name!r}"
        assert type(getattr(defaults, method.block)) is method.config
    assert set(METHOD_NAMES) == {"none", *METHODS}


def test_every_weight_a_method_declares_is_a_float_option_scaling_its_own_terms():
    for name, method in METHODS.items():
        options = {field.name: field for field in dataclasses.fields(method.config)}
        for weight, terms in method.weights.items():
            assert weight in options and isinstance(getattr(method.config(), weight), float), (name, weight)
            assert terms and all(term.startswith(f"{name}/") for term in terms), (name, terms)
    assert METHODS["lad"].weights == {}  # LAD changes the student's targets: no term to scale


@pytest.mark.parametrize("name", list(METHODS))
def test_build_method_gives_the_registered_loss(name):
    losses = build_method(DistillConfig(method=name), student_channels=8, teacher_channels=16)
    assert len(losses) == 1 and type(losses[0]) is METHODS[name].loss
    assert build_method(DistillConfig(method="none"), 8, 16) == []


def test_registry_refuses_a_name_twice_and_names_what_it_holds():
    registry: Registry[Method] = Registry("test method")
    registry.register(Method("a", dict, DistillLoss))
    with pytest.raises(ValueError, match="test method 'a' is registered twice"):
        registry.register(Method("a", dict, DistillLoss))
    with pytest.raises(KeyError, match=r"unknown test method 'b'; known: \['a'\]"):
        registry["b"]

from dataclasses import dataclass, field

import pytest

from rdd3d.core.config_loading import ConfigError, build_config, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    weight_decay: float = 0.01


@dataclass
class Run:
    optim: Optim = field(default_factory=Optim)
    epochs: int = 20
    name: str = "run"


def test_yaml_then_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 0.002\nepochs: 5\n")
    config = build_config(Run, [tmp_path / "a.yaml"], ["epochs=7"])
    assert config == Run(Optim(lr=0.002), epochs=7)


def test_misspelt_key_names_it_and_suggests(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lrr: 0.002\n")
    with pytest.raises(ConfigError, match=r"a.yaml: Key 'lrr' not in 'Optim'\. Did you mean: 'lr'\?"):
        build_config(Run, [tmp_path / "a.yaml"])
    with pytest.raises(ConfigError, match=r"--set optim.weight_decy=0: .*Did you mean: 'weight_decay'"):
        build_config(Run, overrides=["optim.weight_decy=0"])


def test_wrong_type_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="epochs"):
        build_config(Run, overrides=["epochs=many"])
    (tmp_path / "b.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="b.yaml: not valid YAML"):
        build_config(Run, [tmp_path / "b.yaml"])
    (tmp_path / "c.yaml").write_text("!!python/object:os.system {}\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        build_config(Run, [tmp_path / "c.yaml"])


def test_saved_config_loads_back_identically(tmp_path):
    config = build_config(Run, overrides=["optim.lr=0.5", "name=x"])
    save_config(config, tmp_path / "resolved.yaml")
    assert build_config(Run, [tmp_path / "resolved.yaml"]) == config

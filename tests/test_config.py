import pytest
import yaml

from incop.config import default_value, load_yaml, resolve, to_yaml
from incop.errors import UserError


def test_precedence_defaults_then_method_then_file_then_flags():
    config = resolve({"method": "incop-gf", "eps": 0.3}, {"levels": "7", "eps": None})
    assert config.stop == "gf" and config.pruner == "sap"  # from the method preset
    assert config.eps == 0.3  # the file beats the preset; a flag left unset changes nothing
    assert config.levels == 7  # flags arrive as strings and are coerced
    assert config.max_epochs == default_value("max_epochs")


def test_yaml_round_trip(tmp_path):
    config = resolve({"method": "lth", "exclude": "fc3.weight, fc1.weight", "rewind": "epoch:2"})
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    assert resolve(load_yaml(path)) == config
    assert config.exclude == ["fc3.weight", "fc1.weight"]


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(UserError, match="unknown setting 'max_epoch'.*did you mean 'max_epochs'"):
        resolve({"max_epoch": 3})


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"p": 1.0, "q": 1.0}, "p"),
        ({"p": 0.0}, "p"),
        ({"beta": 1.0}, "beta"),
        ({"gamma": 0}, "gamma"),
        ({"eps": -1}, "eps"),
        ({"levels": -1}, "levels"),
        ({"max_epochs": -2}, "max_epochs"),
        ({"method": "sapp"}, "method"),
        ({"rewind": "epoch:x"}, "rewind"),
        ({"rewind": "epoch:5", "warmup_epochs": 2}, "rewind"),
        ({"scope": "neuron", "method": "lth"}, "scope"),
        ({"distance": "l3"}, "distance"),
        ({"levels": "many"}, "levels"),
    ],
)
def test_bad_values_are_refused_naming_the_field(settings, field):
    with pytest.raises(UserError) as info:
        resolve(settings)
    assert str(info.value).startswith(field)


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as info:
        resolve({"beta": 2, "gamma": -1})
    assert "beta" in str(info.value) and "gamma" in str(info.value)


def test_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(UserError, match="mapping"):
        load_yaml(path)

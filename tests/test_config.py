"""Run configuration: layering, ``--set`` parsing, validation messages, schedule specs, round trips."""

from __future__ import annotations

import copy

import pytest

from kdcore.builtin.classify import DIGITS_DEFAULTS
from kdcore.config import CORE_DEFAULTS, ConfigError, parse_set, read_toml, resolve, write_config


def resolve_digits(*sets: str, file_config=None, file_name="run.toml", overrides=None):
    return resolve(DIGITS_DEFAULTS, file_config, file_name, sets, overrides)


# --- layering -------------------------------------------------------------------------------------


def test_resolve_without_layers_is_core_defaults_merged_with_task_defaults():
    config = resolve_digits()
    assert config["seed"] == CORE_DEFAULTS["seed"] == 0  # core default, untouched by the task
    assert config["teacher"]["optimizer"] == "adam"  # core default inside a table the task also sets
    assert config["teacher"]["arch"] == "cnn_large"  # task default over core's ""
    assert config["student"]["lr"] == 5e-3  # task default over core's 1e-3
    assert config["options"] == DIGITS_DEFAULTS["options"]


def test_layers_apply_in_order_core_task_file_set_overrides():
    file_config = {"seed": 1, "student": {"lr": 0.1, "epochs": 3}, "run_name": "from-file"}
    config = resolve_digits(
        "seed=2",
        "student.lr=0.2",
        file_config=file_config,
        overrides={"seed": 3},
    )
    assert config["seed"] == 3  # overrides beat --set, file and defaults
    assert config["student"]["lr"] == 0.2  # --set beats the file
    assert config["student"]["epochs"] == 3  # the file beats the task's 12
    assert config["run_name"] == "from-file"  # the file beats core's ""
    assert config["student"]["arch"] == "cnn_small"  # the task's default survives a partial table
    assert config["teacher"]["lr"] == 2e-3  # untouched task default


def test_later_set_items_win_over_earlier_ones():
    config = resolve_digits("student.epochs=4", "student.epochs=7")
    assert config["student"]["epochs"] == 7


def test_resolve_does_not_mutate_its_inputs():
    defaults = copy.deepcopy(DIGITS_DEFAULTS)
    file_config = {
        "student": {"lr": 0.1},
        "distill": {"temperature": {"name": "linear", "start": 8, "end": 1}},
    }
    file_copy = copy.deepcopy(file_config)
    core_copy = copy.deepcopy(CORE_DEFAULTS)
    resolve(defaults, file_config, "f.toml", ["student.lr=0.3", "distill.temperature.end=2"])
    assert defaults == DIGITS_DEFAULTS
    assert file_config == file_copy
    assert core_copy == CORE_DEFAULTS


# --- parse_set ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("seed=7", {"seed": 7}),
        ("student.lr=3e-4", {"student": {"lr": 3e-4}}),
        ("student.lr=0.5", {"student": {"lr": 0.5}}),
        ("train.amp=false", {"train": {"amp": False}}),
        ("distill.hints=[]", {"distill": {"hints": []}}),
        ("with_plugins=['a', 'b']", {"with_plugins": ["a", "b"]}),
        (
            'distill.temperature={name="cosine", start=8, end=1}',
            {"distill": {"temperature": {"name": "cosine", "start": 8, "end": 1}}},
        ),
        ('run_name="quoted"', {"run_name": "quoted"}),
        ("device=cpu", {"device": "cpu"}),
        ("data.path=/data/my images/x", {"data": {"path": "/data/my images/x"}}),
        ("run_name=a=b", {"run_name": "a=b"}),
        (" student.epochs =3", {"student": {"epochs": 3}}),
    ],
)
def test_parse_set_reads_the_value_as_toml_else_as_a_string(item, expected):
    assert parse_set(item) == expected


def test_parse_set_keeps_value_types_exact():
    assert type(parse_set("a=1")["a"]) is int
    assert type(parse_set("a=1.0")["a"]) is float
    assert type(parse_set("a=true")["a"]) is bool


def test_parse_set_without_equals_sign_names_the_item_and_shows_the_form():
    with pytest.raises(ConfigError) as err:
        parse_set("novalue")
    assert str(err.value) == "--set 'novalue': expected KEY=VALUE, e.g. --set student.lr=0.01"


@pytest.mark.parametrize("item", ["a..b=1", "=1", ".a=1", "a.=1"])
def test_parse_set_rejects_keys_with_empty_parts_naming_the_item(item):
    with pytest.raises(ConfigError) as err:
        parse_set(item)
    assert str(err.value).startswith(f"--set {item!r}: the key ")
    assert "is not a dotted name like student.lr" in str(err.value)


# --- unknown keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "key", "suggestion"),
    [
        ("distill.temprature=3", "distill.temprature", "distill.temperature"),
        ("student.lrr=0.1", "student.lrr", "student.lr"),
        ("seeed=1", "seeed", "seed"),
        ("data.pth=/x", "data.pth", "data.path"),
        ("options.image_sise=16", "options.image_sise", "options.image_size"),
    ],
)
def test_unknown_key_in_set_names_key_source_and_closest_key(item, key, suggestion):
    with pytest.raises(ConfigError) as err:
        resolve_digits(item)
    assert str(err.value) == f"unknown key {key!r} in --set {item}; did you mean {suggestion!r}?"


def test_unknown_key_in_file_names_the_file():
    with pytest.raises(ConfigError) as err:
        resolve_digits(file_config={"student": {"lrr": 0.1}}, file_name="experiments/a.toml")
    assert str(err.value) == "unknown key 'student.lrr' in experiments/a.toml; did you mean 'student.lr'?"


def test_unknown_key_in_overrides_names_the_command_line():
    with pytest.raises(ConfigError) as err:
        resolve_digits(overrides={"devise": "cpu"})
    assert str(err.value) == "unknown key 'devise' in the command line; did you mean 'device'?"


def test_unknown_key_without_close_match_lists_the_valid_keys_of_its_table():
    with pytest.raises(ConfigError) as err:
        resolve_digits("temperature=3")
    message = str(err.value)
    assert message.startswith("unknown key 'temperature' in --set temperature=3; valid keys here: ")
    for key in ("seed", "distill", "student", "options"):
        assert key in message.split("valid keys here: ")[1].split(", ")


def test_unrelated_key_is_not_matched_on_its_table_prefix_alone():
    # "student.zzz" shares only "student." with "student.lr": suggesting it would mislead.
    with pytest.raises(ConfigError) as err:
        resolve_digits("student.zzz=1")
    assert "did you mean" not in str(err.value)
    assert "student.lr" in str(err.value)  # listed among the valid keys instead


def test_options_keys_must_come_from_the_task_defaults():
    with pytest.raises(ConfigError) as err:
        resolve_digits("options.foo=1")
    assert "unknown key 'options.foo' in --set options.foo=1" in str(err.value)


def test_options_declared_by_the_task_are_accepted():
    config = resolve_digits("options.image_size=16", "options.channels=1")
    assert config["options"]["image_size"] == 16
    assert config["options"]["channels"] == 1


def test_unknown_option_of_a_task_without_options_says_there_are_none():
    with pytest.raises(ConfigError) as err:
        resolve({}, sets=["options.x=1"])
    message = str(err.value)
    assert message.startswith("unknown key 'options.x' in --set options.x=1")
    assert not message.rstrip().endswith(":"), f"message ends with an empty list: {message!r}"


# --- types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("seed='7'", "'seed' in --set seed='7' must be an integer, got a string ('7')"),
        (
            "student.epochs=1.5",
            "'student.epochs' in --set student.epochs=1.5 must be an integer, got a number (1.5)",
        ),
        ("seed=true", "'seed' in --set seed=true must be an integer, got a boolean (True)"),
        ("train.amp=1", "'train.amp' in --set train.amp=1 must be a boolean, got an integer (1)"),
        (
            'student.lr="fast"',
            "'student.lr' in --set student.lr=\"fast\" must be a number, got a string ('fast')",
        ),
        ("student.lr=true", "'student.lr' in --set student.lr=true must be a number, got a boolean (True)"),
        ("distill.hints=3", "'distill.hints' in --set distill.hints=3 must be a list, got an integer (3)"),
        ("data=3", "'data' in --set data=3 must be a table, got an integer"),
    ],
)
def test_type_errors_name_key_source_expected_and_actual(item, message):
    with pytest.raises(ConfigError) as err:
        resolve_digits(item)
    assert str(err.value) == message


def test_type_error_in_file_names_the_file():
    with pytest.raises(ConfigError) as err:
        resolve_digits(file_config={"teacher": {"epochs": "ten"}}, file_name="cfg.toml")
    assert str(err.value) == "'teacher.epochs' in cfg.toml must be an integer, got a string ('ten')"


def test_integer_is_accepted_for_a_float_and_normalised_to_float():
    config = resolve_digits("student.lr=1", file_config={"teacher": {"weight_decay": 0}})
    assert config["student"]["lr"] == 1.0
    assert type(config["student"]["lr"]) is float
    assert type(config["teacher"]["weight_decay"]) is float


def test_float_fields_of_the_task_options_are_normalised_too():
    config = resolve_digits("options.train_fraction=1")
    assert type(config["options"]["train_fraction"]) is float


# --- schedule specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("distill.temperature=3", 3),
        ("distill.temperature=2.5", 2.5),
        (
            'distill.temperature={name="cosine", start=8.0, end=1.0}',
            {"name": "cosine", "start": 8.0, "end": 1.0},
        ),
    ],
)
def test_temperature_accepts_a_number_or_a_table(item, expected):
    assert resolve_digits(item)["distill"]["temperature"] == expected


@pytest.mark.parametrize("value", ['"cosine"', "true", "[1, 2]"])
def test_temperature_rejects_anything_else_with_an_example(value):
    with pytest.raises(ConfigError) as err:
        resolve_digits(f"distill.temperature={value}")
    message = str(err.value)
    assert message.startswith(
        f"'distill.temperature' in --set distill.temperature={value} must be a number or "
    )
    assert 'schedule table such as {name = "cosine", start = 4.0, end = 1.0}' in message


def test_loss_weights_are_free_keys_holding_schedule_specs():
    config = resolve_digits("distill.weights.kd=2", 'distill.weights.hint0={name="linear", start=0, end=1}')
    assert config["distill"]["weights"] == {"kd": 2, "hint0": {"name": "linear", "start": 0, "end": 1}}
    with pytest.raises(ConfigError, match=r"'distill\.weights\.kd' in --set distill\.weights\.kd=\"x\""):
        resolve_digits('distill.weights.kd="x"')


def test_switching_schedule_name_by_set_replaces_the_spec_whole():
    config = resolve_digits(
        'distill.temperature.name="linear"', "distill.temperature.start=8", "distill.temperature.end=1"
    )
    assert config["distill"]["temperature"] == {"name": "linear", "start": 8, "end": 1}


def test_switching_schedule_name_in_file_replaces_the_spec_whole():
    file_config = {"distill": {"alpha": {"name": "cosine", "start": 0.9, "end": 0.1}}}
    config = resolve_digits(file_config=file_config)
    assert config["distill"]["alpha"] == {"name": "cosine", "start": 0.9, "end": 0.1}


def test_same_name_schedule_update_merges_with_the_existing_spec():
    config = resolve_digits("distill.temperature.value=2")
    assert config["distill"]["temperature"] == {"name": "constant", "value": 2.0}


def test_set_updates_a_schedule_from_the_file_without_losing_its_other_parameters():
    file_config = {"distill": {"temperature": {"name": "linear", "start": 8, "end": 1}}}
    config = resolve_digits(
        'distill.temperature.name="linear"', "distill.temperature.end=2", file_config=file_config
    )
    assert config["distill"]["temperature"] == {"name": "linear", "start": 8, "end": 2}


# --- task defaults --------------------------------------------------------------------------------


def test_task_defaults_with_an_unknown_top_level_key_raise():
    with pytest.raises(ConfigError) as err:
        resolve({"epochs": 3})
    assert str(err.value).startswith("unknown key 'epochs' in the task's defaults")


def test_task_defaults_with_an_unknown_nested_key_raise_with_suggestion():
    with pytest.raises(ConfigError) as err:
        resolve({"student": {"lrr": 0.1}})
    assert str(err.value) == "unknown key 'student.lrr' in the task's defaults; did you mean 'student.lr'?"


def test_task_defaults_with_a_wrongly_typed_value_raise():
    with pytest.raises(ConfigError, match=r"'teacher\.epochs' in the task's defaults must be an integer"):
        resolve({"teacher": {"epochs": "5"}})


def test_task_defaults_may_declare_any_options():
    config = resolve({"options": {"anything": "goes", "n": 3}})
    assert config["options"] == {"anything": "goes", "n": 3}


# --- files ----------------------------------------------------------------------------------------


def test_write_config_then_read_toml_round_trips_exactly(tmp_path):
    config = resolve_digits(
        "student.lr=1",
        'distill.temperature={name="anneal_to_one", start=8, end_fraction=0.5}',
        "distill.weights.kd=2",
        "with_plugins=['x']",
        'distill.hints=[{student="features.0", teacher="features.1"}]',
        "data.path=/data/x",
    )
    path = write_config(tmp_path / "sub" / "config.toml", config)
    assert path == tmp_path / "sub" / "config.toml"
    assert read_toml(path) == config


def test_a_written_config_resolves_back_to_itself(tmp_path):
    config = resolve_digits("seed=5", 'distill.alpha={name="cosine", start=0.9, end=0.1}')
    path = write_config(tmp_path / "config.toml", config)
    assert resolve_digits(file_config=read_toml(path), file_name=str(path)) == config


def test_read_toml_of_a_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as err:
        read_toml(missing)
    assert str(err.value) == f"config file {missing} does not exist"


def test_read_toml_of_invalid_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 3\n")
    with pytest.raises(ConfigError, match=rf"config file {bad} is not valid TOML: "):
        read_toml(bad)


@pytest.mark.parametrize(
    "key", ["teacher.epochs", "student.epochs", "data.batch_size", "train.eval_every", "train.accumulate"]
)
def test_counts_below_one_are_refused_with_the_key(key):
    with pytest.raises(
        ConfigError, match=rf"'{key}' in --set {key}=0 must be an integer of at least 1, got 0"
    ):
        resolve({}, sets=[f"{key}=0"])


def test_a_variant_count_below_one_is_refused_with_the_variant():
    with pytest.raises(
        ConfigError, match=r"'student.epochs' in --set .* \(variants.v\) must be an integer of at"
    ):
        resolve({}, sets=["variants.v.student.epochs=0"])

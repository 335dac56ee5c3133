"""The typed run configuration: one list of Trainer settings, checked values, clear errors."""

import dataclasses
import inspect
import json

import pytest

import divekit as dk
from divekit.cli import FLAG_FOR_SETTING, build_parser, main
from divekit.config import RunConfig, TrainerSettings
from divekit.recipes import get_recipe, list_recipes

NOT_SETTINGS = {"task", "out_dir", "progress", "callbacks", "config", "nan_check_every"}


def test_trainer_settings_are_the_trainers_keyword_settings_with_its_defaults():
    parameters = inspect.signature(dk.Trainer).parameters
    settings = {item.name: item.default for item in dataclasses.fields(TrainerSettings)}
    trainer = {name: p.default for name, p in parameters.items() if name not in NOT_SETTINGS}
    assert settings == trainer


def test_every_trainer_setting_has_a_flag_on_train_and_recipe_run():
    train = build_parser().parse_args(["train", "lenet"])
    run = build_parser().parse_args(["recipe", "run", "lenet-fashion-mnist"])
    for item in dataclasses.fields(TrainerSettings):
        flag = FLAG_FOR_SETTING.get(item.name, item.name)
        assert hasattr(train, flag) and hasattr(run, flag), item.name


def test_every_recipe_config_round_trips_through_json():
    for name in list_recipes():
        config = get_recipe(name).config
        if config is not None:
            again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
            assert again == config, name


def test_a_run_directory_config_is_read_back_as_written(tmp_path, capsys):
    assert main(["train", "lenet-bn", "--data", "digits", "--epochs", "1", "--lr", "0.3",
                 "--label-smoothing", "0.1", "--out", str(tmp_path), "--quiet"]) == 0
    config = RunConfig.read(tmp_path)
    assert config.trainer.lr == 0.3 and config.trainer.max_epochs == 1
    assert config.task_options == {"label_smoothing": 0.1, "num_classes": 10, "flip_test": False}


@pytest.mark.parametrize(("content", "fragment"), [
    ("null", "must hold a JSON object"),
    ("42", "must hold a JSON object with model, data, batch_size and trainer, got int 42"),
    ('"fast"', "got str"),
    ('{"data": "digits"}', "lacks model"),
    ('{"model": "lenet", "trainer": {"speed": 3}}', "trainer has no setting 'speed'; the "
                                                     "settings are: max_epochs, max_steps, lr"),
    ('{"model": "lenet", "trainer": {"lr": "fast"}}', "setting 'lr' must be a number, got 'fast'"),
    ('{"model": "lenet", "trainer": {"max_epochs": 2.5}}', "'max_epochs' must be an integer"),
    ('{"model": "lenet", "batch_size": true}', "'batch_size' must be an integer, got True"),
    ('{"model": "lenet", "trainer": []}', "trainer must be a JSON object, got list"),
    ('{"model": "lenet", "finetune": {"freeze": "0.*"}}', "'freeze' must be a list"),
    ('{"model": "lenet", "colour": "red"}', "has no setting 'colour'"),
    ("{not json", "is not valid JSON"),
])
def test_a_bad_config_json_is_one_line_on_resume(tmp_path, capsys, content, fragment):
    (tmp_path / "config.json").write_text(content)
    status = main(["train", "--resume", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert fragment in err and str(tmp_path / "config.json") in err


def test_runs_written_before_tasks_owned_label_smoothing_still_load():
    config = RunConfig.from_dict({"model": "lenet", "trainer": {"lr": 0.1,
                                                                 "label_smoothing": 0.2}})
    assert config.task_options == {"label_smoothing": 0.2}
    assert config.trainer == TrainerSettings(lr=0.1)


def test_recipe_configs_show_what_they_change():
    changes = get_recipe("fashion-mnist-fast").config.changes()
    assert changes["trainer"]["schedule"] == "onecycle" and "seed" not in changes["trainer"]
    assert changes["data_options"] == {"normalize": True}

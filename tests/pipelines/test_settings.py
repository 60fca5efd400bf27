"""Settings groups: every field is one CLI option, and the manifest round-trips them."""

import dataclasses
import json

import click
import pytest

from rmeeto_export.cli import build as build_command
from rmeeto_export.errors import InternalError
from rmeeto_export.pipelines.retrain import retrain_command
from rmeeto_export.pipelines.settings import GROUPS, BuildSettings, RetrainSettings, options, setting


def option_names(command: click.Command) -> set[str]:
    return {param.name for param in command.params if isinstance(param, click.Option)}


def test_build_has_one_option_per_field_of_every_group():
    expected = {f"{group.KEY}__{field.name}" for group in GROUPS for field in dataclasses.fields(group)}
    assert option_names(build_command) - {"out", "force", "help"} == expected


def test_retrain_shares_the_model_and_retraining_options_with_build():
    shared = {name for name in option_names(retrain_command) if "__" in name}
    assert shared == {name for name in option_names(build_command) if name.split("__")[0] in ("model", "retrain")}


def test_two_settings_with_one_option_are_a_bug():
    @dataclasses.dataclass(frozen=True)
    class Clashing:
        KEY = "clash"
        ema: bool = setting(False, "one", toggle=True)
        no_ema: bool = setting(False, "two", is_flag=True)

    with pytest.raises(InternalError, match="--no-ema"):
        options(Clashing)(lambda **kwargs: None)


def test_settings_round_trip_through_the_manifest_json():
    settings = BuildSettings().replace(retrain=RetrainSettings(data="images", epochs=1))
    assert BuildSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings

"""config.py: the reference's variables that have no effect here are accepted, held nowhere, and announced."""

from __future__ import annotations

import logging

import pytest

from modelrunner.cli import announce_ignored
from modelrunner.config import IGNORED_REFERENCE_VARIABLES, Settings

REQUIRED = {"AWS_DEFAULT_REGION": "us-east-1", "JOB_TABLE": "j", "REGION_REQUEST_TABLE": "r",
            "FEATURE_TABLE": "f", "IMAGE_QUEUE": "iq", "REGION_QUEUE": "rq", "WORKERS": "2"}


def test_the_worker_starts_with_the_ignored_variables_set_to_anything() -> None:
    env = {**REQUIRED, "WORKERS_PER_CPU": "2", "THROTTLING_SCALE_FACTOR": "not a number",
           "ELEVATION_DATA_VERSION": "1arc_v3"}
    settings = Settings.from_env(env)
    assert settings.ignored_variables == ("WORKERS_PER_CPU", "THROTTLING_SCALE_FACTOR", "ELEVATION_DATA_VERSION")
    assert Settings.from_env(REQUIRED).ignored_variables == ()


def test_each_set_variable_gets_one_note_saying_why() -> None:
    settings = Settings.from_env({**REQUIRED, "ELEVATION_DATA_VERSION": "1arc_v3", "API_ENDPOINT": "x"})
    why = IGNORED_REFERENCE_VARIABLES
    assert settings.ignored_notes() == [
        f"ELEVATION_DATA_VERSION is set and has no effect here because {why['ELEVATION_DATA_VERSION']}",
        f"API_ENDPOINT is set and has no effect here because {why['API_ENDPOINT']}",
    ]


def test_the_start_up_logs_the_notes_once(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({**REQUIRED, "WORKERS_PER_CPU": "1"})
    with caplog.at_level(logging.INFO, logger="modelrunner.config"):
        announce_ignored(settings)
    notes = [r.getMessage() for r in caplog.records if r.name == "modelrunner.config"]
    assert len(notes) == 1 and notes[0].startswith("WORKERS_PER_CPU is set and has no effect here because WORKERS")

"""The reference pages cannot drift from the code: doc/configuration.md against ``Settings.from_env``,
doc/image-request.md against ``ImageRequest.from_dict``; and every Python script is linted."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from modelrunner.config import Settings
from modelrunner.errors import ConfigError
from modelrunner.requests import ImageRequest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"AWS_DEFAULT_REGION": "us-east-1", "JOB_TABLE": "j", "REGION_REQUEST_TABLE": "r",
            "FEATURE_TABLE": "f", "IMAGE_QUEUE": "iq", "REGION_QUEUE": "rq", "WORKERS": "2"}


class Recorder(dict[str, Any]):
    """A mapping that remembers every key asked for, present or not."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


def table_rows(page: str) -> Iterator[list[str]]:
    """The body cells of every Markdown table on a doc page."""
    for line in (ROOT / "doc" / page).read_text().splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] not in ("variable", "key", "key (camelCase or snake_case)", "request", "call", "resource",
                                "member", "attribute", "Operation", "step", "command"):
                yield cells


def config_rows() -> list[tuple[list[str], str, str]]:
    """(variables, field, default) of each row of the configuration tables."""
    rows = []
    for cells in table_rows("configuration.md"):
        if len(cells) != 4:
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        field_names = re.findall(r"`([a-z_]+)`", cells[1])
        if names and len(field_names) == 1:
            rows.append((names, field_names[0], cells[2]))
    return rows


def test_every_variable_settings_reads_is_documented_and_nothing_else() -> None:
    asked: set[str] = set()
    # The second environment reaches the fallbacks (AWS_REGION when AWS_DEFAULT_REGION is unset).
    without_default_region = {k: v for k, v in REQUIRED.items() if k != "AWS_DEFAULT_REGION"}
    for values in (REQUIRED, {**without_default_region, "AWS_REGION": "eu-west-1"}):
        env = Recorder(values)
        Settings.from_env(env)
        asked |= env.asked
    documented = {name for names, _, _ in config_rows() for name in names}
    assert asked == documented, (
        f"read but not in doc/configuration.md: {sorted(asked - documented)}; "
        f"documented but not read: {sorted(documented - asked)}")


def _documented_default(text: str) -> Any:
    text = text.strip("`")
    if text == "unset":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@pytest.mark.parametrize(("names", "field", "default"), config_rows(), ids=lambda v: v if isinstance(v, str) else None)
def test_documented_field_and_default_are_the_settings(names: list[str], field: str, default: str) -> None:
    assert field in {f.name for f in fields(Settings)}, f"{names}: no Settings.{field}"
    if default == "required":
        env = {k: v for k, v in REQUIRED.items() if k not in names}
        with pytest.raises(ConfigError):
            Settings.from_env(env)
        return
    settings = Settings.from_env(REQUIRED)
    actual, expected = getattr(settings, field), _documented_default(default)
    if isinstance(actual, tuple) and expected is None:
        expected = ()  # an unset list
    elif isinstance(actual, tuple) and isinstance(expected, str):
        expected = tuple(expected.split(","))  # a list, as the variable is written
    assert actual == expected, f"{names[0]}: documented default {default}"
    # Setting the variable changes that field (the row names the right one).
    sample = {"region_size": "(512, 256)", "log_level": "ERROR", "elevation_data_extension": "png"}.get(field)
    if sample is None:
        current = getattr(settings, field)
        sample = "example.org" if isinstance(current, tuple) else \
            ("true" if not current else "false") if isinstance(current, bool) else (
            "7" if isinstance(current, int | float) else "/data" if field == "local_image_root"
            else "arn:aws:sns:us-east-1:1:t" if current is None
            else current + "x")
    changed = Settings.from_env({**REQUIRED, names[0]: sample})
    assert getattr(changed, field) != getattr(settings, field), f"{names[0]} does not set Settings.{field}"


def test_every_imagerequest_key_is_documented() -> None:
    request = Recorder({"jobId": "j", "imageUrls": ["s3://b/k.tif"], "imageProcessor": Recorder({"name": "ep"}),
                        "outputs": [{"type": "S3", "bucket": "b"}]})
    ImageRequest.from_dict(request)
    text = (ROOT / "doc" / "image-request.md").read_text()
    documented = set(re.findall(r"`([A-Za-z][A-Za-z0-9_.]*)`", text))
    processor = request["imageProcessor"]
    asked = request.asked | {f"imageProcessor.{key}" for key in processor.asked}
    missing = sorted(key for key in asked if key not in documented)
    assert not missing, f"ImageRequest keys not in doc/image-request.md: {missing}"


def _python_scripts() -> list[Path]:
    found = []
    for folder in ("scripts", "bin"):
        for path in sorted((ROOT / folder).iterdir()):
            if path.is_file() and (path.suffix == ".py" or path.read_bytes()[:64].startswith(b"#!")
                                   and b"python" in path.read_bytes().split(b"\n", 1)[0]):
                found.append(path)
    return found


def test_ruff_is_told_about_every_python_script() -> None:
    """ruff finds ``*.py`` under the folders it is given, but a script without the suffix only when named."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    named = set(config.get("extend-include", []))
    scripts = _python_scripts()
    assert len(scripts) >= 5
    names = [str(p.relative_to(ROOT)) for p in scripts if p.suffix != ".py"]
    unlinted = [name for name in names if name not in named]
    assert not unlinted, f"add to [tool.ruff] extend-include in pyproject.toml: {unlinted}"

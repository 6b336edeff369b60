"""docs/configuration.md is what scripts/gen_config_docs.py makes from the settings classes, and
every setting has a description (the document has no hand-kept table to fall back on)."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest
from pydantic import Field

from chat_shared.config import CommonSettings
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gen_config_docs.py"


def load_generator() -> ModuleType:
    # scripts/ is not a package; load the script from its path like `python scripts/...` would.
    spec = importlib.util.spec_from_file_location("gen_config_docs_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_configuration_doc_is_fresh() -> None:
    gen = load_generator()
    committed = pathlib.Path(gen.OUT).read_text()
    assert committed == gen.render(), (
        "docs/configuration.md is stale: run `uv run python scripts/gen_config_docs.py`")


def test_every_setting_of_every_service_is_in_the_doc() -> None:
    gen = load_generator()
    text = pathlib.Path(gen.OUT).read_text()
    for _, cls in (*gen.SHARED, *gen.SERVICES):
        for name, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{name} has no description"
            assert f"| `{name.upper()}` |" in text, name


def test_a_setting_without_a_description_stops_the_generator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gen = load_generator()

    class Undocumented(CommonSettings):
        surprise_knob: int = Field(3)

    monkeypatch.setattr(gen, "SERVICES", (*gen.SERVICES, ("chat-surprise", Undocumented)))
    with pytest.raises(ValueError, match=r"Undocumented.surprise_knob has no description"):
        gen.render()

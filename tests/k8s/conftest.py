"""Fixtures of the packaging tests (tests/k8s): the rendered chart per variant, cached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.k8s import support


@pytest.fixture(scope="session")
def rendered() -> Callable[..., tuple[dict[str, Any], ...]]:
    """rendered(variant="default", kube=NEWEST, crds=True) -> objects; each rendered once."""
    return support.render

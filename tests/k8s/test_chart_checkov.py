"""checkov, a static analyser for Kubernetes manifests, on the chart as it renders with the default
values and with values-production.yaml: no failed check except the documented skips
(helm/chat-service/checkov-skips.yaml, each for named objects, with its reason).

checkov runs from its own venv (.tools/checkov, installed by ./dev test): in the workspace it
would pin packaging<24 and downgrade the test tools.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any

import pytest

from tests.k8s import support

SKIPS_FILE = support.CHART / "checkov-skips.yaml"
OPERATIONS = support.ROOT / "docs" / "operations.md"
RENDERS = ("default", "production")


def checkov() -> str:
    local = support.ROOT / ".tools" / "checkov" / "bin" / "checkov"
    found = str(local) if local.exists() else shutil.which("checkov")
    assert found, "checkov not found in .tools/checkov or on PATH (./dev test installs it)"
    return found


@functools.cache
def failed_checks(variant: str) -> tuple[tuple[str, str], ...]:
    """(check id, "Kind/name") of every failed check on the variant's render."""
    rendered = support.template(support.VARIANTS[variant]).stdout
    with tempfile.TemporaryDirectory(prefix="chat-checkov-") as tmp:
        path = pathlib.Path(tmp) / f"{variant}.yaml"
        path.write_text(rendered)
        proc = subprocess.run([checkov(), "-f", str(path), "--framework", "kubernetes",
                               "--quiet", "--compact", "--output", "json", "--skip-download"],
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1) and proc.stdout.strip(), proc.stderr[-2000:]
    report: Any = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["passed"] > 100, report["summary"]  # it did check the objects
    found = []
    for result in report["results"]["failed_checks"]:
        kind, _namespace, name = result["resource"].split(".", 2)
        found.append((result["check_id"], f"{kind}/{name}"))
    return tuple(sorted(found))


def skips() -> list[dict[str, Any]]:
    return support.load_yaml(SKIPS_FILE)["skips"]


def skipped(check: str, obj: str, variant: str) -> bool:
    return any(s["check"] == check and variant in s["renders"]
               and any(fnmatch.fnmatchcase(obj, pattern) for pattern in s["objects"])
               for s in skips())


@pytest.mark.parametrize("variant", RENDERS)
def test_checkov_finds_nothing_beyond_the_documented_skips(variant: str) -> None:
    unexpected = [f for f in failed_checks(variant) if not skipped(*f, variant)]
    assert unexpected == []


@pytest.mark.parametrize("variant", RENDERS)
def test_every_skip_still_matches_a_finding(variant: str) -> None:
    """A skip that no longer matches anything hides the next regression: remove it."""
    findings = failed_checks(variant)
    for skip in skips():
        if variant in skip["renders"]:
            assert any(check == skip["check"] and any(fnmatch.fnmatchcase(obj, p)
                                                      for p in skip["objects"])
                       for check, obj in findings), skip


def test_every_skip_has_a_reason_and_is_documented() -> None:
    text = OPERATIONS.read_text()
    section = text.split("## Chart security checks", 1)[1].split("\n## ", 1)[0]
    for skip in skips():
        assert len(skip["reason"]) > 40 and set(skip["renders"]) <= set(RENDERS), skip
        assert skip["check"] in section, f"{skip['check']} not in docs/operations.md"

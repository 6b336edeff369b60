"""The example Alertmanager config (k8s/monitoring/alertmanager.yml, also used by compose) is
valid and routes critical alerts to the pager and warnings to the team channel."""

from __future__ import annotations

import pathlib

import pytest

from tests.k8s import support

CONFIG = support.ROOT / "k8s" / "monitoring" / "alertmanager.yml"


def amtool(*args: str, check: bool = True) -> tuple[int, str, str]:
    proc = support.run([support.tool("amtool"), *args], check=check)
    return proc.returncode, proc.stdout, proc.stderr


def test_config_checks() -> None:
    _, out, _ = amtool("check-config", str(CONFIG))
    assert "SUCCESS" in out


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=critical", "alertname=OutboxBacklogCritical"], "pager"),
    (["severity=warning", "alertname=OutboxBacklogHigh"], "team-chat"),
    (["alertname=Unlabelled"], "team-chat"),
])
def test_routes_by_severity(labels: list[str], receiver: str) -> None:
    rc, out, _ = amtool("config", "routes", "test", f"--config.file={CONFIG}",
                    f"--verify.receivers={receiver}", *labels)
    assert rc == 0 and out.strip() == receiver


def test_rules_severities_all_have_a_route() -> None:
    severities = {r["labels"]["severity"] for r in support.alert_rules()}
    text = CONFIG.read_text()
    for sev in severities:
        assert f'severity="{sev}"' in text


def test_a_broken_config_is_rejected(tmp_path: pathlib.Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: pager", "receiver: nobody"))
    rc, out, err = amtool("check-config", str(broken), check=False)
    assert rc != 0 and "nobody" in out + err

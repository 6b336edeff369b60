"""`./dev images`'s decisions that need no buildah: image names, the bases it stands in for, and
which of the host's settings become build secrets (and how they are written)."""

from __future__ import annotations

import pathlib
import shlex
import subprocess

import pytest

from chat_devtools import images
from tests.conftest import ROOT


def test_names_are_the_charts_repository_and_app_version() -> None:
    assert images.image_name("api", ROOT) == "ghcr.io/chat-service/chat-api:" + \
        images.app_version(ROOT)
    with pytest.raises(images.ImageBuildError, match="unknown service 'web'"):
        images.image_name("web", ROOT)


def test_bases_are_the_external_from_lines_only() -> None:
    bases = images.base_images(ROOT)
    assert {b.rpartition(":")[0] for b in bases} == {"python", "ghcr.io/astral-sh/uv"}
    assert not {"uv", "build", "runtime"} & bases  # stage names are not images


def test_short_names_resolve_as_a_builder_resolves_them() -> None:
    assert images.qualified("python:3.11.13-slim-bookworm") == \
        "docker.io/library/python:3.11.13-slim-bookworm"
    assert images.qualified("bitnami/redis:7") == "docker.io/bitnami/redis:7"
    assert images.qualified("ghcr.io/astral-sh/uv:0.13.9") == "ghcr.io/astral-sh/uv:0.13.9"


def test_stand_in_recipes() -> None:
    minor, suite, recipe = images.python_recipe("python:3.11.13-slim-bookworm")
    assert (minor, suite) == ("3.11", "bookworm")
    assert images.python_recipe("python:3.12.1-slim-trixie")[2] != recipe
    with pytest.raises(images.ImageBuildError, match="no stand-in recipe"):
        images.python_recipe("python:3.11-alpine")
    assert images.uv_recipe("ghcr.io/astral-sh/uv:0.13.9")[0] == "0.13.9"
    with pytest.raises(images.ImageBuildError, match="no stand-in recipe"):
        images.uv_recipe("ghcr.io/astral-sh/uv:latest")


def test_index_settings_become_secrets_and_nothing_else_does(tmp_path: pathlib.Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n")
    config = tmp_path / "uv.toml"
    config.write_text('index-url = "https://mirror.example/simple"\n')
    environ = {"SSL_CERT_FILE": str(bundle), "UV_CONFIG_FILE": str(config),
               "UV_INDEX_URL": "https://user:p w'd@mirror.example/simple",
               "UV_INDEX_PRIVATE_PASSWORD": "hunter2", "HTTPS_PROXY": "http://proxy:3128",
               "JWT_SECRET": "not-for-the-build", "PATH": "/usr/bin"}
    with images.index_secrets(environ) as args:
        secrets = dict(a.removeprefix("id=").split(",src=") for a in args[1::2])
        assert args[::2] == ["--secret"] * 3
        assert set(secrets) == {"index-env", "ca-bundle", "uv-config"}
        files = {name: pathlib.Path(src) for name, src in secrets.items()}
        for path in files.values():
            assert path.stat().st_mode & 0o777 == 0o600
        assert files["ca-bundle"].read_text() == bundle.read_text()
        assert files["uv-config"].read_text() == config.read_text()
        # The env file is what the Dockerfiles source with `set -a; . file`: read it the same way.
        shown = subprocess.run(
            ["sh", "-c", f"set -a; . {shlex.quote(str(files['index-env']))}; env"],
            capture_output=True, text=True, env={}, check=True).stdout.splitlines()
        assert "UV_INDEX_URL=https://user:p w'd@mirror.example/simple" in shown
        assert "UV_INDEX_PRIVATE_PASSWORD=hunter2" in shown
        assert "HTTPS_PROXY=http://proxy:3128" in shown
        assert "SSL_CERT_FILE=/run/secrets/ca-bundle" in shown
        assert "UV_CONFIG_FILE=/run/secrets/uv-config" in shown
        assert not [line for line in shown if line.startswith(("JWT_SECRET", "PATH=/usr/bin"))]
    assert not any(path.exists() for path in files.values()), "removed after the build"


def test_without_index_settings_the_secrets_are_empty() -> None:
    with images.index_secrets({"UV_NO_CONFIG": "1"}) as args:
        for src in args[1::2]:
            assert pathlib.Path(src.split(",src=")[1]).read_text() == ""


def test_a_missing_build_tool_is_named_with_the_install_command(
        monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """As on a machine without buildah: nothing on PATH provides it."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(images.ImageBuildError,
                       match=r"missing buildah\b.*: apt-get install buildah\b"):
        images.build(ROOT, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists(), "nothing is started before the check"

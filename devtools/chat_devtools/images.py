"""``chat-images`` (what ``./dev images`` runs): the four service images, built with buildah.

The Dockerfiles (services/*/Dockerfile) keep their public ``FROM`` lines for anyone whose
builder can pull them. This machine reaches the package registries only (PyPI, Debian), not an
image registry, so the base images are made here first, from the same software, and tagged
with exactly the names the Dockerfiles use:

- ``python:<version>-slim-<suite>``: a Debian root file system from ``debootstrap
  --variant=minbase`` with Debian's Python 3 and the few packages the official slim image has
  that the build needs (``passwd`` for useradd, ``ca-certificates``, ``netbase``, ``tzdata``),
  Python linked at /usr/local/bin where the official image keeps it. Debian's Python is a
  different patch release (e.g. 3.11.2 for a 3.11.13 tag).
- ``ghcr.io/astral-sh/uv:<version>``: /uv and /uvx taken from uv's wheel on PyPI, installed by
  the ordinary client.

Both are STAND-INS, not the published images: their labels say so
(``dev.chat-service.stand-in``), and ``--pull`` builds against the real ones instead. A
stand-in is rebuilt only when its recipe (its label ``dev.chat-service.recipe``) changes.

Everything lives in a store of its own (vfs driver, chroot isolation: what works without a
container runtime), under CHAT_IMAGES_CACHE (default ``~/.cache/chat-service/images``). What a
second build reuses: the stand-ins, and uv's download cache (the Dockerfiles' cache mount).
Build steps are not kept as layers (no ``--layers``): with vfs every kept step is a full copy
of the file system, and a build that reuses all of them took twice as long (55 s for chat-api)
as one that runs every step again (25 s).

The build reaches the package index the way this machine's uv does: the index, proxy and TLS
settings uv reads from the environment (UV_INDEX_URL, UV_DEFAULT_INDEX, HTTPS_PROXY,
SSL_CERT_FILE ...) and uv's configuration file go in as build secrets (``index-env``,
``ca-bundle``, ``uv-config``), mounted only while ``uv sync`` runs, never written to a layer.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("api", "outbox-relay", "relay-operator", "ws-gateway")
REPOSITORY = "ghcr.io/chat-service/chat-{service}"
"""The image name of each service: the chart's ``<component>.image.repository`` default."""

STAND_IN_LABEL = "dev.chat-service.stand-in"
RECIPE_LABEL = "dev.chat-service.recipe"

# What the official python:*-slim image has that the build or the services need.
DEBIAN_PACKAGES = ("python3", "passwd", "ca-certificates", "netbase", "tzdata")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Dropped from the stand-in's root file system: package caches and documentation.
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/info", "usr/share/locale")

# uv's settings that say where and how it reaches an index (uv reads them from the
# environment); UV_INDEX_<NAME>_USERNAME/PASSWORD are matched by prefix.
INDEX_ENV = ("UV_INDEX", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL",
             "UV_FIND_LINKS", "UV_INDEX_STRATEGY", "UV_KEYRING_PROVIDER", "UV_INSECURE_HOST",
             "UV_HTTP_TIMEOUT", "UV_NATIVE_TLS", "UV_OFFLINE",
             "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
             "http_proxy", "https_proxy", "no_proxy", "all_proxy")
SECRET_DIR = "/run/secrets"

BUILD_TIMEOUT = 1800.0
"""Seconds one buildah or debootstrap step may take before the build is called stuck."""


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says which step failed and why."""


@dataclass(frozen=True)
class BuiltImage:
    service: str
    name: str
    size_bytes: int
    seconds: float


def image_name(service: str, root: Path) -> str:
    """``<repository>:<tag>``: the chart's repository and its appVersion, what ``helm
    install`` pulls with the default values."""
    if service not in SERVICES:
        raise ImageBuildError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return f"{REPOSITORY.format(service=service)}:{app_version(root)}"


def app_version(root: Path) -> str:
    text = (root / "helm" / "chat-service" / "Chart.yaml").read_text()
    found = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', text, flags=re.M)
    if not found:
        raise ImageBuildError("helm/chat-service/Chart.yaml has no appVersion")
    return found.group(1)


def dockerfile(service: str, root: Path) -> Path:
    return root / "services" / service / "Dockerfile"


def base_images(root: Path) -> set[str]:
    """Every external image a service Dockerfile starts from (``FROM x`` not naming a stage)."""
    bases: set[str] = set()
    for service in SERVICES:
        stages: set[str] = set()
        for line in dockerfile(service, root).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].upper() == "FROM":
                if parts[1] not in stages:
                    bases.add(parts[1])
                if len(parts) >= 4 and parts[2].upper() == "AS":
                    stages.add(parts[3])
    return bases


def qualified(ref: str) -> str:
    """A short image name as a builder resolves it (``python:3`` -> docker.io/library/...)."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


# --- buildah ---------------------------------------------------------------------------------

def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get("CHAT_IMAGES_CACHE"):
        return Path(environ["CHAT_IMAGES_CACHE"])
    xdg = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "chat-service" / "images"


def buildah_argv(cache: Path | None = None) -> list[str]:
    """``buildah`` with the global flags of this project's store (vfs, under the cache)."""
    cache = cache or cache_dir()
    return ["buildah", "--root", str(cache / "storage"), "--runroot", str(cache / "run"),
            "--storage-driver", "vfs"]


def missing_tools(pull: bool = False) -> list[str]:
    """The Debian packages this build needs that the machine lacks."""
    need = ["buildah"] + ([] if pull else ["debootstrap"])
    return [tool for tool in need
            if not (shutil.which(tool) or Path("/usr/sbin", tool).exists())]


def run_logged(argv: Sequence[str], log: Path, *, what: str, cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> str:
    """Runs a build step with its output in ``log``; its stdout. Raises ImageBuildError with
    the end of the log when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        out.write("$ " + shlex.join(argv) + "\n")
        out.flush()
        try:
            proc = subprocess.run(list(argv), cwd=cwd, env=dict(env) if env else None,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=out, timeout=BUILD_TIMEOUT, text=True)
        except FileNotFoundError as e:
            raise ImageBuildError(f"{what}: {argv[0]} is not installed") from e
        except subprocess.TimeoutExpired as e:
            raise ImageBuildError(f"{what}: no result within {BUILD_TIMEOUT:g}s "
                                  f"(log: {log})") from e
        out.write(proc.stdout)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}; whole log: {log}):\n"
                              f"{tail}")
    return proc.stdout


def inspect_image(ref: str, cache: Path) -> dict[str, object] | None:
    """``buildah inspect`` of an image in the store; None when there is no such image."""
    proc = subprocess.run([*buildah_argv(cache), "inspect", "--type", "image", ref],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return None
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def labels(info: Mapping[str, object]) -> dict[str, str]:
    config = info.get("OCIv1", {})
    assert isinstance(config, dict)
    found = config.get("config", {}).get("Labels") or {}
    return dict(found)


def containers(cache: Path) -> set[str]:
    """The ids of the working containers in the store."""
    proc = subprocess.run([*buildah_argv(cache), "containers", "--quiet", "--notruncate"],
                          capture_output=True, text=True, timeout=120)
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


_UNITS = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def image_size(ref: str, cache: Path) -> int:
    """Bytes, as ``buildah images`` reports them (three significant digits)."""
    proc = subprocess.run([*buildah_argv(cache), "images", "--json", ref],
                          capture_output=True, text=True, timeout=120, check=True)
    number, unit = json.loads(proc.stdout)[0]["size"].split()
    return round(float(number) * _UNITS[unit])


# --- stand-ins ---------------------------------------------------------------------------------

def recipe_hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def python_recipe(ref: str) -> tuple[str, str, str]:
    """(Python minor version, Debian suite, recipe hash) for a ``python:X.Y[.Z]-slim-<suite>``."""
    tag = ref.rpartition(":")[2]
    found = re.fullmatch(r"(\d+\.\d+)(?:\.\d+)?-slim-(\w+)", tag)
    if not found:
        raise ImageBuildError(f"no stand-in recipe for {ref}: expected python:X.Y.Z-slim-<suite>")
    minor, suite = found.groups()
    return minor, suite, recipe_hash("python", minor, suite, DEBIAN_PACKAGES, TRIM, 1)


def uv_recipe(ref: str) -> tuple[str, str]:
    version = ref.rpartition(":")[2]
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ImageBuildError(f"no stand-in recipe for {ref}: expected a uv X.Y.Z tag")
    return version, recipe_hash("uv", version, 1)


def stand_in_current(ref: str, recipe: str, cache: Path) -> bool:
    info = inspect_image(qualified(ref), cache)
    return info is not None and labels(info).get(RECIPE_LABEL) == recipe


def commit_stand_in(cache: Path, ref: str, recipe: str, description: str,
                    adds: Sequence[tuple[Path, str]], config: Sequence[str], logs: Path) -> None:
    buildah = buildah_argv(cache)
    name = f"stand-in-{recipe}"
    with contextlib.suppress(subprocess.SubprocessError):
        subprocess.run([*buildah, "rm", name], capture_output=True, timeout=120)
    run_logged([*buildah, "from", "--name", name, "scratch"], logs / "from.log",
               what=f"stand-in {ref}: buildah from scratch")
    try:
        for src, dest in adds:
            run_logged([*buildah, "add", name, str(src), dest], logs / "add.log",
                       what=f"stand-in {ref}: buildah add {src.name}")
        run_logged([*buildah, "config", *config,
                    "--label", f"{STAND_IN_LABEL}={description}",
                    "--label", f"{RECIPE_LABEL}={recipe}",
                    "--label", f"org.opencontainers.image.description=STAND-IN: {description}",
                    name], logs / "config.log", what=f"stand-in {ref}: buildah config")
        run_logged([*buildah, "commit", "--quiet", name, qualified(ref)], logs / "commit.log",
                   what=f"stand-in {ref}: buildah commit")
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run([*buildah, "rm", name], capture_output=True, timeout=120)


def build_python_stand_in(ref: str, cache: Path, mirror: str) -> None:
    minor, suite, recipe = python_recipe(ref)
    if os.geteuid() != 0:
        raise ImageBuildError(f"stand-in {ref}: debootstrap needs root (run as root, or build "
                              "with --pull where the registry is reachable)")
    logs = cache / "logs" / "python-stand-in"
    with tempfile.TemporaryDirectory(prefix="python-stand-in-", dir=cache) as tmp:
        rootfs = Path(tmp) / "rootfs"
        run_logged(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                    suite, str(rootfs), mirror], logs / "debootstrap.log",
                   what=f"stand-in {ref}: debootstrap {suite}")
        python = rootfs / "usr" / "bin" / f"python{minor}"
        if not python.exists():
            raise ImageBuildError(f"stand-in {ref}: Debian {suite}'s python3 is not Python "
                                  f"{minor} (no /usr/bin/python{minor})")
        for path in TRIM:
            shutil.rmtree(rootfs / path, ignore_errors=True)
        # Where the official image has its interpreter (the Dockerfiles set UV_PYTHON to it).
        for link in ("python3", "python", f"python{minor}"):
            (rootfs / "usr" / "local" / "bin" / link).symlink_to(f"/usr/bin/python{minor}")
        tarball = Path(tmp) / "rootfs.tar"
        run_logged(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."],
                   logs / "tar.log", what=f"stand-in {ref}: tar")
        description = (f"local stand-in for {ref}: Debian {suite} (debootstrap minbase) with "
                       f"Debian's python3 ({minor}.x), not the official Python image")
        commit_stand_in(cache, ref, recipe, description, [(tarball, "/")],
                        ["--env", "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:"
                                  "/sbin:/bin",
                         "--env", "LANG=C.UTF-8", "--cmd", "python3"], logs)


def uv_binary() -> str:
    """The uv running this command (``uv run`` says where in UV), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        raise ImageBuildError("uv is not on PATH (./dev images finds or installs it)")
    return found


def build_uv_stand_in(ref: str, cache: Path) -> None:
    version, recipe = uv_recipe(ref)
    logs = cache / "logs" / "uv-stand-in"
    with tempfile.TemporaryDirectory(prefix="uv-stand-in-", dir=cache) as tmp:
        venv = Path(tmp) / "venv"
        uv = uv_binary()
        run_logged([uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                   logs / "venv.log", what=f"stand-in {ref}: uv venv")
        run_logged([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    f"uv=={version}"], logs / "install.log",
                   what=f"stand-in {ref}: installing uv {version} from its wheel")
        description = (f"local stand-in for {ref}: /uv and /uvx from uv {version}'s wheel on "
                       "PyPI, not the published uv image")
        commit_stand_in(cache, ref, recipe, description,
                        [(venv / "bin" / "uv", "/uv"), (venv / "bin" / "uvx", "/uvx")],
                        ["--cmd", "/uv"], logs)


def ensure_stand_ins(root: Path, cache: Path, mirror: str = DEBIAN_MIRROR,
                     echo: Callable[[str], None] = print) -> None:
    """Builds each base the Dockerfiles name, unless a stand-in of the same recipe is there."""
    for ref in sorted(base_images(root)):
        repo = ref.rpartition(":")[0]
        if repo in ("python", "docker.io/library/python"):
            recipe = python_recipe(ref)[2]
        elif repo == "ghcr.io/astral-sh/uv":
            recipe = uv_recipe(ref)[1]
        else:
            raise ImageBuildError(f"no stand-in recipe for base image {ref}; build with --pull")
        if stand_in_current(ref, recipe, cache):
            echo(f"images: stand-in {ref} is current")
            continue
        started = time.monotonic()
        if repo == "ghcr.io/astral-sh/uv":
            build_uv_stand_in(ref, cache)
        else:
            build_python_stand_in(ref, cache, mirror)
        echo(f"images: stand-in {ref} built in {time.monotonic() - started:.0f}s")


# --- the index configuration, as build secrets ----------------------------------------------

def default_uv_config(environ: Mapping[str, str]) -> Path | None:
    if environ.get("UV_CONFIG_FILE"):
        return Path(environ["UV_CONFIG_FILE"])
    if environ.get("UV_NO_CONFIG"):
        return None
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for candidate in (Path(xdg) / "uv" / "uv.toml", Path("/etc/uv/uv.toml")):
        if candidate.is_file():
            return candidate
    return None


def index_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that tell uv where the index is and how to reach it, as the build sees
    them (files become the mounted secrets)."""
    out = {k: v for k, v in environ.items()
           if k in INDEX_ENV or (k.startswith("UV_INDEX_") and k.endswith(("_USERNAME",
                                                                            "_PASSWORD")))}
    if environ.get("SSL_CERT_FILE") or environ.get("UV_NATIVE_TLS"):
        out["SSL_CERT_FILE"] = f"{SECRET_DIR}/ca-bundle"
    if default_uv_config(environ) is not None:
        out["UV_CONFIG_FILE"] = f"{SECRET_DIR}/uv-config"
    return out


def ca_bundle(environ: Mapping[str, str]) -> Path | None:
    if environ.get("SSL_CERT_FILE"):
        return Path(environ["SSL_CERT_FILE"])
    if environ.get("UV_NATIVE_TLS"):
        return Path("/etc/ssl/certs/ca-certificates.crt")
    return None


@contextlib.contextmanager
def index_secrets(environ: Mapping[str, str] = os.environ) -> Iterator[list[str]]:
    """``--secret`` arguments for the three ids the Dockerfiles mount, from files in a private
    directory that is removed afterwards. Every id is given (empty when the host has none)."""
    with tempfile.TemporaryDirectory(prefix="chat-images-secrets-") as tmp:
        files = {"index-env": Path(tmp) / "index-env"}
        files["index-env"].write_text("".join(f"{k}={shlex.quote(v)}\n"
                                              for k, v in sorted(index_env(environ).items())))
        for name, source in (("ca-bundle", ca_bundle(environ)),
                             ("uv-config", default_uv_config(environ))):
            files[name] = Path(tmp) / name
            files[name].write_bytes(source.read_bytes() if source else b"")
        for path in files.values():
            path.chmod(0o600)
        yield [arg for name, path in files.items() for arg in ("--secret", f"id={name},src={path}")]


# --- the service images ----------------------------------------------------------------------

def build_service(service: str, root: Path, cache: Path, secrets: Sequence[str], *,
                  pull: bool = False) -> BuiltImage:
    name = image_name(service, root)
    started = time.monotonic()
    run_logged([*buildah_argv(cache), "bud", "--isolation", "chroot", "--network", "host",
                "--pull=true" if pull else "--pull=never", *secrets,
                "-f", str(dockerfile(service, root)), "-t", name, str(root)],
               cache / "logs" / f"{service}.log", what=f"building {name}")
    seconds = time.monotonic() - started
    return BuiltImage(service, name, image_size(name, cache), seconds)


def build(root: Path, services: Sequence[str] = SERVICES, *, cache: Path | None = None,
          pull: bool = False, echo: Callable[[str], None] = print,
          environ: Mapping[str, str] = os.environ) -> list[BuiltImage]:
    """Stand-ins (unless ``pull``), then each service's image; raises ImageBuildError."""
    cache = cache or cache_dir(environ)
    missing = missing_tools(pull)
    if missing:
        raise ImageBuildError(f"missing {', '.join(missing)}: apt-get install "
                              f"{' '.join(missing)} (the images are built with buildah)")
    cache.mkdir(parents=True, exist_ok=True)
    if not pull:
        ensure_stand_ins(root, cache, environ.get("CHAT_IMAGES_DEBIAN_MIRROR", DEBIAN_MIRROR),
                         echo)
    built = []
    before = containers(cache)
    try:
        with index_secrets(environ) as secrets:
            for service in services:
                image = build_service(service, root, cache, secrets, pull=pull)
                echo(f"images: {image.name} built in {image.seconds:.0f}s, "
                     f"{image.size_bytes / 1e6:.0f} MB")
                built.append(image)
    finally:
        # buildah 1.28 leaves the working container of a stage that is only copied from (the
        # uv stage) behind, a copy of its image each: removed here.
        for leftover in containers(cache) - before:
            subprocess.run([*buildah_argv(cache), "rm", leftover], capture_output=True,
                           timeout=120)
    # The images these replaced, now untagged (a few hundred MB each); one that a container
    # still uses stays, and that is no reason to fail the build.
    try:
        run_logged([*buildah_argv(cache), "rmi", "--prune"], cache / "logs" / "prune.log",
                   what="removing replaced images")
    except ImageBuildError as e:
        echo(f"images: (kept some replaced images) {e}")
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev images",
        description="Build the service images with buildah (local stand-ins for the base "
                    "images unless --pull).")
    parser.add_argument("services", nargs="*", metavar="SERVICE",
                        help=f"only these ({', '.join(SERVICES)}); default all")
    parser.add_argument("--pull", action="store_true",
                        help="pull the real base images from their registries (no stand-ins)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.services if s not in SERVICES]
    if unknown:
        parser.error(f"no service {', '.join(unknown)}; one of {', '.join(SERVICES)}")
    root = Path.cwd()
    if not dockerfile("api", root).is_file():
        parser.error("run from the repository root (./dev images does)")
    started = time.monotonic()
    try:
        built = build(root, args.services or SERVICES, pull=args.pull)
    except ImageBuildError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    print(f"images: {len(built)} built in {time.monotonic() - started:.0f}s; list them with\n"
          f"  {shlex.join(buildah_argv())} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

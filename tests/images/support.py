"""Running and reading the built images with buildah, as the image tests do.

``Container``: one image's process under ``buildah run`` (chroot isolation, the host's network,
the image's own user), a ``ServiceProcess`` underneath so readiness, announced ports and logs
work as for the services run from the workspace. buildah does not pass SIGTERM on to the
process it runs (it kills it), so ``terminate`` signals the service's own process, as the
kubelet's runtime signals a container's first process.

``chart_env``: a component's environment as the chart sets it (rendered with helm: its env,
the ConfigMap it reads, the credential files it mounts), with the test's addresses in.

``layers``: the image's layers as tar files, for the walk over what each one holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from chat_devtools import images
from chat_devtools.process import Probe, ServiceProcess
from tests.k8s import support as k8s

ROOT = k8s.ROOT
SECRETS_DIR = "/var/run/secrets/chat"
"""Where the chart mounts the credential files."""
SECRETS_MOUNT = "/run/secrets/chat"
"""The same directory as buildah must be told it: it follows no symlink in a mount's target,
and /var/run is a link to /run in the image."""


def buildah(*args: str, timeout: float = 600) -> str:
    proc = subprocess.run([*images.buildah_argv(), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def image_config(name: str) -> dict[str, Any]:
    """The image's OCI configuration (``config``, ``history``...)."""
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", name))["OCIv1"]
    return config


def layers(name: str, dest: pathlib.Path) -> list[pathlib.Path]:
    """Every layer of the image as an uncompressed tar file, lowest first."""
    buildah("push", "--quiet", "--disable-compression", name, f"dir:{dest}")
    manifest = json.loads((dest / "manifest.json").read_text())
    return [dest / layer["digest"].partition(":")[2] for layer in manifest["layers"]]


# --- the chart's environment -----------------------------------------------------------------

def _rendered() -> tuple[dict[str, Any], ...]:
    return k8s.render()


def chart_container(workload: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, container) of the chart's Deployment or Job named ``<release>-<workload>``."""
    for name, spec in k8s.pod_specs(_rendered()):
        if name.endswith(f"-{workload}"):
            return spec, spec["containers"][0]
    raise AssertionError(f"the chart renders no workload {workload}")


def chart_env(workload: str, credentials: Mapping[str, str],
              overrides: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(environment, credential files by file name) of a chart workload's container.

    ``credentials``: the value of each credential the chart mounts as a file (DB_SOURCE,
    JWT_SECRET); ``overrides``: the test's addresses and ports. Field references resolve as in
    the chart's namespace (``chat``)."""
    spec, container = chart_container(workload)
    configmaps = {d["metadata"]["name"]: d.get("data", {})
                  for d in _rendered() if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = "chat"
        else:
            raise AssertionError(f"{workload}: no stand-in for {item}")
    files = {}
    for credential in k8s.secret_files(spec, container):
        path = pathlib.PurePosixPath(env[f"{credential}_FILE"])
        assert str(path.parent) == SECRETS_DIR, path
        files[path.name] = credentials[credential]
    env.update(overrides)
    return env, files


def write_credentials(directory: pathlib.Path, files: Mapping[str, str]) -> pathlib.Path:
    """The files, readable by the image's user (the chart's secret volume is 0444 too)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name, value in files.items():
        (directory / name).write_text(value)
        (directory / name).chmod(0o444)
    return directory


# --- running an image ------------------------------------------------------------------------

def service_pid(buildah_pid: int) -> int:
    """The pid of the process ``buildah run`` started in the container: the child of its
    ``buildah-chroot-exec`` helper."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    todo = [buildah_pid]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            argv0 = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if argv0.endswith(b"buildah-chroot-exec"):
                (child,) = children.get(pid, [])
                return child
        todo += children.get(pid, [])
    raise AssertionError(f"no process of buildah run (pid {buildah_pid}) found")


class Container:
    """An image's command under ``buildah run`` (default: the one the image names, its CMD);
    ``env`` is the container's environment on top of the image's (its values may be ``PICK``,
    filled in at each start)."""

    def __init__(self, name: str, image: str, env: Mapping[str, str], log_dir: pathlib.Path,
                 *, command: Sequence[str] | None = None, ready: Probe | None = None,
                 volumes: Sequence[str] = ()) -> None:
        self.name = name
        self.image = image
        config = image_config(image)["config"]
        self.command = list(command or [*(config.get("Entrypoint") or []), *config["Cmd"]])
        self.container = f"chat-smoke-{name}-{os.getpid()}"
        with contextlib.suppress(AssertionError):
            buildah("rm", self.container)
        buildah("from", "--pull=never", "--name", self.container, image)
        tool = shutil.which("buildah")
        assert tool, "buildah is not on PATH"
        # The values reach buildah through its environment and go in as `-e NAME=value`:
        # ServiceProcess fills in picked ports at each start.
        run = shlex.join([tool, *images.buildah_argv()[1:], "run", "--isolation", "chroot",
                          "--network", "host", "--mount", "type=tmpfs,destination=/tmp",
                          *(arg for v in volumes for arg in ("--volume", v))])
        env_args = " ".join(f'-e "{key}=${{{key}}}"' for key in env)
        script = (f"exec {run} {env_args} {shlex.quote(self.container)} -- "
                  f"{shlex.join(self.command)}")
        outer = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        self.process = ServiceProcess(name, ["/bin/sh", "-c", script], env={**outer, **env},
                                      ready=ready, log_path=log_dir / f"{name}.log")

    def start(self) -> Container:
        self.process.start()
        return self

    def uid(self) -> int:
        """The real user id the service's process runs as."""
        status = pathlib.Path(f"/proc/{service_pid(self.process.pid)}/status").read_text()
        (line,) = [ln for ln in status.splitlines() if ln.startswith("Uid:")]
        return int(line.split()[1])

    def terminate(self, grace: float) -> int:
        """SIGTERM to the service's process; its exit code (buildah run passes it on)."""
        os.kill(service_pid(self.process.pid), signal.SIGTERM)
        return self.process.wait(grace)

    def run_to_end(self, timeout: float) -> int:
        self.process.start()
        return self.process.wait(timeout)

    def files_owned_by(self, uid: int) -> list[str]:
        """Paths in the container's root file system owned by ``uid`` (what the process wrote
        there: the image holds none of its user's files)."""
        root = pathlib.Path(buildah("mount", self.container).strip())
        found = []
        try:
            for dirpath, dirnames, filenames in os.walk(root):
                for name in dirnames + filenames:
                    path = pathlib.Path(dirpath, name)
                    with contextlib.suppress(OSError):
                        if path.lstat().st_uid == uid:
                            found.append("/" + str(path.relative_to(root)))
        finally:
            buildah("umount", self.container)
        return found

    def remove(self) -> None:
        if self.process.running:
            self.process.stop(5)
        with contextlib.suppress(AssertionError):
            buildah("rm", self.container)


@contextlib.contextmanager
def removed_at_end(containers: list[Container]) -> Iterator[list[Container]]:
    try:
        yield containers
    finally:
        for c in containers:
            c.remove()


def wait_for(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)

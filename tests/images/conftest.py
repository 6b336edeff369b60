"""The service images, built once per session by the same code as `./dev images`.

Building needs buildah and debootstrap (Debian packages; .ci/run installs them). Where they
are missing or the build fails, every image test fails and says why: an image that cannot be
built here is a failure to see, not a skip. Each image's size and build time are printed at
the end of the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from chat_devtools import images
from tests.k8s.support import ROOT

_BUILT: list[images.BuiltImage] = []
_ERROR: list[str] = []
_TIMES: dict[str, float] = {}

# Cold, the stand-ins (about 2.5 minutes) and the four images (about 1.5) are built in the
# fixture's first use; the marker's time limit covers that setup.
BUILD_TIMEOUT = 900


@pytest.fixture(scope="session")
def built_images() -> Iterator[dict[str, images.BuiltImage]]:
    if _ERROR:
        pytest.fail(_ERROR[0], pytrace=False)
    started = time.monotonic()
    try:
        built = images.build(ROOT, echo=lambda line: None)
    except images.ImageBuildError as e:
        _ERROR.append(f"the service images could not be built on this machine: {e}")
        pytest.fail(_ERROR[0], pytrace=False)
    _TIMES["build"] = time.monotonic() - started
    _BUILT[:] = built
    yield {image.service: image for image in built}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _BUILT:
        return
    terminalreporter.section("service images (./dev images)")
    for image in _BUILT:
        terminalreporter.write_line(f"{image.name:<50} {image.size_bytes / 1e6:>6.0f} MB  "
                                    f"built in {image.seconds:.0f} s")
    terminalreporter.write_line(f"stand-ins and images together: {_TIMES['build']:.0f} s")

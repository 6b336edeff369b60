"""Why a development process could not be used."""

from __future__ import annotations


class ServiceError(RuntimeError):
    """A process exited, did not become ready, or did not stop; the message ends with its output."""


class PortInUse(ServiceError):
    """The process could not bind a port that something else holds (a retry may pick another)."""

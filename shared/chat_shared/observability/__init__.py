"""Logging, metrics and tracing set up the same way in every service."""

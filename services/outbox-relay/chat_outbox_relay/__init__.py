"""Outbox relay service (built in its own issue)."""

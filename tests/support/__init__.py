"""Test support code that is more than a fixture."""

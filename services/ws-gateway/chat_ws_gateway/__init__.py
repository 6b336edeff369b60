"""WebSocket gateway service (built in its own issue)."""

"""WebSocket gateway: fans the event streams out to connected clients, in order, with resume."""

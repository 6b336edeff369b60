"""chat-service API: gRPC chat.v1.ChatService (and its HTTP/JSON gateway) over PostgreSQL."""

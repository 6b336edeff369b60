"""chat-service API: gRPC chat.v1.ChatService over PostgreSQL and Redis."""

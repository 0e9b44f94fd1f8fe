"""The REST transport: the v2 HTTP routes over FastAPI; nothing here knows a framework."""

"""The S3-compatible HTTP API: a lean ASGI app (see docs/architecture.md for why not FastAPI routes)."""

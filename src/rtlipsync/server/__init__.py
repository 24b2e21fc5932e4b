"""The HTTP server: native routes, seed-compatible routes, the browser page."""

from rtlipsync.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]

"""HTTP API and web page for grounding queries in videos (`python -m ground serve`, docs/serving.md)."""

from ground.serve.app import create_app, serve_main

__all__ = ["create_app", "serve_main"]

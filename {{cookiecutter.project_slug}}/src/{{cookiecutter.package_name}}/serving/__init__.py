"""The HTTP inference server. `server` starts it; `app` is the FastAPI application."""

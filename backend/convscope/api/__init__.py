"""HTTP: the only package that knows FastAPI and Starlette."""

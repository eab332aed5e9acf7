"""convscope's performance benchmark: ``python -m bench`` (see docs/performance.md).

It starts its own server on 127.0.0.1, measures the HTTP service side by side with an
in-process floor (forward pass + make_grid + PNG encode of the same maps) and with
matplotlib, prints one table, and stops the server.
"""

"""A client of batchserve's HTTP API for the command-line tools.

It speaks HTTP only and imports nothing from the rest of batchserve, so what it does is exactly
what any other client of a running server can do.
"""

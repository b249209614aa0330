"""Versioned schema migrations, one SQL file per version and dialect.

``NNNN_name.postgres.sql`` and ``NNNN_name.sqlite.sql`` must exist in pairs; ``events.migrate``
applies the missing ones in order and records them in ``schema_migrations``.
"""

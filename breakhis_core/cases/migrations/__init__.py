"""Alembic migrations of the case store (``database.migrate`` runs them; ``breakhis db upgrade`` from the CLI)."""

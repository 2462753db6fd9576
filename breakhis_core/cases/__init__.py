"""The case store: cases, their images, predictions, reviews and sign-off, kept in a database.

One concept per module: ``models`` (the tables, SQLAlchemy 2 typed ORM), ``database`` (the database URL, engines,
the schema version and Alembic migrations under ``migrations/``), ``imagefiles`` (image files stored once by
SHA-256 on disk), ``records`` (what the service hands out: frozen dataclasses), ``service`` (``CaseService``: every
read and change, with roles enforced and audit lines written), ``dataset`` (reviewed cases as a labelled manifest),
``backup`` (``breakhis db backup`` / ``restore``).
"""

"""Alembic's environment: migrations run on the connection that ``database.migrate`` hands over (no ``alembic.ini``,
no URL of its own), in one transaction."""

from alembic import context

from breakhis_core.cases.models import Base

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata,
                  render_as_batch=True, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()

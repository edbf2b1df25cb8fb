"""Alembic environment: migrations run on the connection the registry hands over
(see matrixinfer.registry.adapters.db.migrate), never on a URL of their own."""

from alembic import context

from matrixinfer.registry.adapters.db.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()

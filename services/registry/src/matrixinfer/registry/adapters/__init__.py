"""The registry's adapters: the SQL store (SQLAlchemy, Alembic) behind the domain's
Store protocol."""

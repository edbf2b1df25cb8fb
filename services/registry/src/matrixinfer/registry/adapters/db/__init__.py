"""The registry's storage adapter: SQLAlchemy 2 async over PostgreSQL (psycopg 3) or
SQLite (aiosqlite). The only package that imports sqlalchemy."""

"""Alembic migrations of the service's database (run by `db.upgrade`, never by hand)."""

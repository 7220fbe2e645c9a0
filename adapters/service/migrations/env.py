"""Alembic's entry point, run by `db.upgrade` on the connection it hands over (under the
PostgreSQL upgrade lock); a developer writing a new revision may pass `sqlalchemy.url` instead:

    config = Config(); config.set_main_option("script_location", str(db.MIGRATIONS))
    config.set_main_option("sqlalchemy.url", "sqlite:////tmp/dev.db")
    command.upgrade(config, "head")
    command.revision(config, "what changed", autogenerate=True, rev_id="0002")
"""

from __future__ import annotations

from alembic import context

from domainvlm.adapters.service.db import Base, engine_for


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite alters a table by copying it; batch mode writes revisions that way.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    engine = engine_for(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            run(connection)
    finally:
        engine.dispose()

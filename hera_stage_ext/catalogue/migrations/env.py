"""Alembic environment: runs migrations on the engine handed over by ``upgrade``."""

from __future__ import annotations

from alembic import context

from hera_stage_ext.catalogue.models import Base
import hera_stage_ext.jobs.models  # noqa: F401  (the job and transfer tables share Base.metadata)
import hera_stage_ext.transfer.models  # noqa: F401
import hera_stage_ext.transfer.order_models  # noqa: F401
import hera_stage_ext.site.models  # noqa: F401

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

"""Instances and events: their foreign keys to ``file`` and ``store`` replaced by rows that are
never deleted (a trigger refuses deleting a file or a store row) and by the catalogue's code.

Each foreign key is a trigger a row: on PostgreSQL a query, its executor started and the file's
or store's row locked ``FOR KEY SHARE``, about 3.5 us of server CPU a check; registering a new
file with its copy made three (its instance to file and store, its event to file): 49 -> 38 us
of server CPU a file (benchmarks/README.md, session 12). What they guarded is kept:

- a file or store row is never deleted (no code does; names are immutable, a store no longer
  configured is made unavailable): ``BEFORE DELETE`` triggers (PostgreSQL: also ``TRUNCATE``;
  once a statement, nothing on insert) refuse it, so an id once valid stays valid;
- an instance or event is written only with the id of a file and store that exist
  (``catalogue.tables.Tables.write``: ids allocated or looked up in the same transaction, any
  other checked in one query a statement; ``NotFound`` otherwise).

SQLite keeps a trigger only while its table is not rebuilt: a later batch migration of ``file``
or ``store`` must create its ``*_rows_never_deleted`` trigger again.

The file table's foreign key to its observation, the observation's to its session and the
remote instance's to its file stay.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: (table, column, referred table): the foreign keys this revision drops.
_DROPPED = (("instance", "file_id", "file"), ("instance", "store_id", "store"),
            ("event", "file_id", "file"))
#: Tables whose rows are never deleted.
_KEPT = ("file", "store")
#: SQLite's foreign keys are unnamed: a name given by convention to drop them by.
_SQLITE_FK_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _trigger_name(table: str) -> str:
    return f"{table}_rows_never_deleted"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column, _referred in _DROPPED:
            op.drop_constraint(f"{table}_{column}_fkey", table, type_="foreignkey")
        op.execute(
            "CREATE FUNCTION catalogue_rows_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'rows of the % table are never deleted', TG_TABLE_NAME"
            " USING ERRCODE = 'restrict_violation'; END $$")
        for table in _KEPT:
            op.execute(f"CREATE TRIGGER {_trigger_name(table)} BEFORE DELETE OR TRUNCATE"
                       f' ON "{table}" FOR EACH STATEMENT'
                       " EXECUTE FUNCTION catalogue_rows_never_deleted()")
        return
    for table in ("instance", "event"):
        # A catalogue made before 0013 has unnamed keys (named by convention to drop them);
        # one downgraded from 0013 has the names ``downgrade`` gave them.
        names = {tuple(fk["constrained_columns"]): fk["name"]
                 for fk in sa.inspect(op.get_bind()).get_foreign_keys(table)}
        with op.batch_alter_table(table, naming_convention=_SQLITE_FK_NAMES) as batch_op:
            for fk_table, column, referred in _DROPPED:
                if fk_table == table and (column,) in names:
                    batch_op.drop_constraint(
                        names[(column,)] or f"fk_{table}_{column}_{referred}",
                        type_="foreignkey")
    for table in _KEPT:
        op.execute(f'CREATE TRIGGER {_trigger_name(table)} BEFORE DELETE ON "{table}" '
                   f"BEGIN SELECT RAISE(ABORT, 'rows of the {table} table are never deleted'); END")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in _KEPT:
        op.execute(f"DROP TRIGGER {_trigger_name(table)}"
                   + (f' ON "{table}"' if postgresql else ""))
    if postgresql:
        op.execute("DROP FUNCTION catalogue_rows_never_deleted()")
    for table, column, referred in _DROPPED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.create_foreign_key(f"{table}_{column}_fkey", referred, [column], ["id"])

"""BigQuery tables as Sluice keeps them: created on first need, widened by tables.patch.

Schemas are cached per process (every backend in a worker shares them) and re-read from
BigQuery before each change, so another worker's additions are kept. New columns of one
batch go in one patch per table (BigQuery allows about five metadata updates per table
per ten seconds). A patch from a stale schema is refused (412 on the etag; 400 when it
would remove a field) and re-read and retried. Views are kept with CREATE OR REPLACE VIEW.
"""
import threading
from collections import Counter

from google.api_core import exceptions

from transforms.warehouse import bigquery_schema as bq, planner, replays

_SCHEMA_ATTEMPTS = 6        # re-read and re-patch a table this often on conflicting changes
_LOCK = threading.RLock()   # schema changes of every backend in this process
_SCHEMAS = {}               # (project, dataset, table) -> TableSchema, shared by the process
_STATES_CURRENT = set()     # (project, dataset) whose _dead_letters_view this process found or made current
# 400s that mean "the table changed meanwhile": BigQuery refuses a patch that would drop a
# field another writer added; the emulator reports a lost commit race as "Failed to commit".
_SCHEMA_CONFLICTS = ("Cannot remove field", "does not match", "Failed to commit")


class Replan(Exception):
    """The table changed under us (another worker): plan the batch again on a fresh schema."""


class BigQueryTables:
    def __init__(self, client, project: str, dataset: str, retry, calls: Counter):
        self._client, self.project, self.dataset, self.retry, self.calls = client, project, dataset, retry, calls

    def _call(self, kind: str, method, *args, **kwargs):
        self.calls[kind] += 1
        return method(*args, retry=self.retry, **kwargs)

    def ref(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def forget(self, table: str) -> None:
        _SCHEMAS.pop((self.project, self.dataset, table), None)

    def _fetch(self, table: str):
        """The table as BigQuery has it now, or None when it does not exist."""
        try:
            return self._call("tables.get", self._client.get_table, self.ref(table))
        except exceptions.NotFound:
            return None

    def _remember(self, table: str, found):
        schema = None if found is None else bq.table_schema(table, found.schema)
        _SCHEMAS[(self.project, self.dataset, table)] = schema
        return schema

    def read_schema(self, table: str):
        """The table's schema from BigQuery (None when it does not exist), cached."""
        return self._remember(table, self._fetch(table))

    def schema(self, table: str):
        key = (self.project, self.dataset, table)
        return _SCHEMAS[key] if key in _SCHEMAS else self.read_schema(table)

    def evolve(self, table: str, plan) -> None:
        """Create the table, or add the plan's new columns; raise Replan if another worker
        changed it in a way the plan did not expect. The table is read fresh once per attempt;
        its etag makes a patch from it fail (412) if anyone changed the table since."""
        with _LOCK:
            for _ in range(_SCHEMA_ATTEMPTS):
                found = self._fetch(table)
                try:
                    if found is None:
                        found = self._create(table, list(planner.fixed_columns(table)) + plan.new_columns)
                    else:
                        missing = self._missing_columns(bq.table_schema(table, found.schema), plan.new_columns)
                        if missing:
                            found = self._add_columns(table, found, missing)
                    self._remember(table, found)
                    return
                except (exceptions.Conflict, exceptions.PreconditionFailed):
                    continue  # someone else created or patched it first: look again
                except exceptions.BadRequest as exc:
                    if not any(sign in str(exc) for sign in _SCHEMA_CONFLICTS):
                        raise
                    continue  # a patch from a stale schema, or a commit that lost a race: look again
            raise RuntimeError(f"table {table}: schema kept changing under {_SCHEMA_ATTEMPTS} attempts")

    @staticmethod
    def _missing_columns(current, wanted) -> list:
        missing = []
        for column in wanted:
            found = current.columns.get(column.name)
            if found is None:
                missing.append(column)
            elif found.source != column.source or found.type != column.type:
                raise Replan()  # the name was taken meanwhile, for another value or type
        return missing

    def _create(self, table: str, columns):
        created = self._call("tables.insert", self._client.create_table, bq.new_table(self.ref(table), table, columns))
        self._create_view(table, columns)
        return created

    def _add_columns(self, table: str, found, columns):
        """`found` patched with `columns` (its etag set: a patch from a stale read gets 412)."""
        found.schema = list(found.schema) + [bq.field(c) for c in columns]
        updated = self._call("tables.patch", self._client.update_table, found, ["schema"])
        if table == "users":
            self._replace_view("users_view", bq.users_view_sql(self.ref(table),
                                                               bq.table_schema(table, updated.schema).columns.values()))
        return updated

    def _create_view(self, table: str, columns) -> None:
        if table == replays.REPLAYS_TABLE:  # bookkeeping of replay runs: no view
            return
        if table == "users":
            self._replace_view("users_view", bq.users_view_sql(self.ref(table), columns))
        elif table == planner.DEAD_LETTER_TABLE:  # each original failure once, its latest state: needs _replays
            self.ensure(replays.REPLAYS_TABLE, [planner.Column(n, t, "$" + n) for n, t in replays.REPLAYS_COLUMNS])
            self._replace_view(replays.STATES_VIEW, self._states_select())
            _STATES_CURRENT.add((self.project, self.dataset))
        else:
            key = {planner.DELIVERIES_TABLE: "delivery_id"}.get(table) or planner.key_column(table)
            self._replace_view(f"{table}_view", bq.latest_view_sql(self.ref(table), key))

    def _states_select(self) -> str:
        letters = f"({bq.latest_view_sql(self.ref(planner.DEAD_LETTER_TABLE), 'dead_letter_id')})"
        return replays.states_view_sql(letters, f"`{self.ref(replays.REPLAYS_TABLE)}`", "JSON_VALUE")

    def ensure_states_view(self) -> None:
        """`_dead_letters_view` is this version's view of each original failure's state: a dataset
        made before has another query (the newest row per dead_letter_id, or a state view without
        replay chains), replaced here. BigQuery keeps a view's query as given, so comparing it
        tells. Once per process and dataset (one tables.get when it is current)."""
        if (self.project, self.dataset) in _STATES_CURRENT:
            return
        with _LOCK:
            view = self._fetch(replays.STATES_VIEW)
            if view is None or (view.table_type == "VIEW"
                                and (view.view_query or "").strip() != self._states_select().strip()):
                self._create_view(planner.DEAD_LETTER_TABLE, None)
            _STATES_CURRENT.add((self.project, self.dataset))

    def _replace_view(self, name: str, select: str) -> None:
        try:
            existing = self._call("tables.get", self._client.get_table, self.ref(name))
        except exceptions.NotFound:
            existing = None
        if existing is not None and existing.table_type != "VIEW":
            self.calls["views.skipped"] += 1  # an event table has that name: leave it alone
            return
        self.calls["jobs.query"] += 1
        self._client.query_and_wait(bq.create_view_sql(self.ref(name), select), retry=self.retry)

    def ensure(self, table: str, columns) -> None:
        """The table exists (created with `columns` if it did not): for fixed layouts."""
        if self.schema(table) is not None:
            return
        with _LOCK:
            if self.read_schema(table) is None:
                try:
                    self._remember(table, self._create(table, columns))
                except exceptions.Conflict:
                    self.read_schema(table)  # created meanwhile by another worker

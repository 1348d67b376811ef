"""The printed run summary says what its figures are: a BigQuery counter that is no API call is
not added to the calls, and `rows.users` (identifies applied) is not added to the rows written."""
from pipeline import summary


def printed(counters: dict) -> dict:
    """label -> figure, for each line of the printed table that has one."""
    lines = summary.format_table(summary.build({"read": 1, "events": 1, "stored": 1, **counters})).splitlines()
    return {" ".join(line.split()[:-1]): line.split()[-1] for line in lines
            if line.split() and line.split()[-1].replace(",", "").isdigit()}


def test_counters_that_are_no_bigquery_api_call_are_not_in_the_total():
    table = printed({"api_calls.tables.get": 3, "api_calls.jobs.load": 2, "api_calls.views.skipped": 1,
                     "api_calls.jobs.load_refused": 1, "api_calls.mutation_lag.waits": 4})
    assert table["BigQuery API calls"] == "5"  # tables.get + jobs.load
    assert (table["tables.get"], table["jobs.load"]) == ("3", "2")
    assert "views.skipped" not in table and table["BigQuery views skipped"] == "1"
    assert table["BigQuery load jobs refused"] == "1" and table["BigQuery mutation lag waits"] == "4"


def test_identifies_applied_to_users_are_not_counted_as_rows_written():
    table = printed({"rows.identifies": 228, "rows.users": 228, "rows.tracks": 10})
    assert table["rows written"] == "238"  # identifies + tracks: users may hold fewer rows (an upsert)
    assert table["identifies applied to users"] == "228" and "users" not in table

"""The emulator itself: started by the suite, answering the real client on 127.0.0.1."""
import pytest
from google.cloud import bigquery

pytestmark = pytest.mark.integration


def test_the_emulator_answers_the_real_client(bigquery_client, dataset_name):
    bigquery_client.create_dataset(bigquery.Dataset(f"{bigquery_client.project}.{dataset_name}"))
    table = bigquery_client.create_table(bigquery.Table(f"{bigquery_client.project}.{dataset_name}.t",
                                                        schema=[bigquery.SchemaField("x", "INT64")]))
    assert bigquery_client.insert_rows_json(table, [{"x": 1}, {"x": 2}]) == []
    rows = bigquery_client.query(f"SELECT sum(x) AS s FROM `{bigquery_client.project}.{dataset_name}.t`").result()
    assert [r.s for r in rows] == [3]

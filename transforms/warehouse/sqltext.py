"""DuckDB SQL text: identifiers and string literals as statements spell them (one home for the
backend and the bulk path, which writes SQL of its own; shred cannot import the backend, which
imports it)."""


def quote(name: str) -> str:
    """An identifier (table, column), double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A string literal, single-quoted."""
    return "'" + text.replace("'", "''") + "'"

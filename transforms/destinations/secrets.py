"""Secrets a destination needs (tokens, signing keys), read from an environment variable or a
file (local or gs://), never from the config itself, and never written to logs or dead letters.

    {env: CRM_TOKEN}    {file: /var/run/secrets/crm-token}    {env: CRM_TOKEN, prefix: "Bearer "}
"""
from typing import NamedTuple, Optional


class SecretError(ValueError):
    pass


class SecretRef(NamedTuple):
    env: Optional[str] = None
    file: Optional[str] = None
    prefix: str = ""

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


def parse(spec) -> Optional[SecretRef]:
    """A config value: a plain string is not a secret (None); {env}/{file} is a SecretRef."""
    if isinstance(spec, dict):
        return SecretRef(spec.get("env"), spec.get("file"), spec.get("prefix", ""))
    return None


def resolve(ref: SecretRef, environ=None) -> str:
    """The secret's value (with its prefix); SecretError naming where it was looked for."""
    import os
    environ = os.environ if environ is None else environ
    if ref.env:
        value = environ.get(ref.env)
        if not value:
            raise SecretError(f"environment variable {ref.env} is not set (or empty)")
    else:
        from transforms.readfile import open_binary  # Beam only for a gs:// or compressed file
        try:
            with open_binary(ref.file) as handle:
                value = handle.read().decode("utf-8").strip()
        except Exception as exc:  # noqa: BLE001 - any filesystem error names the file, never the value
            raise SecretError(f"cannot read secret file {ref.file} ({type(exc).__name__})") from None
        if not value:
            raise SecretError(f"secret file {ref.file} is empty")
    return ref.prefix + value


def redact(text: str, secrets) -> str:
    """`text` with every secret value replaced, for messages that echo a server's answer."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def excerpt(text: str, secrets, limit: int, cut_short: bool = False) -> str:
    """At most `limit` characters of a server's answer, on one line, with every secret redacted.

    Redacts first and cuts after: cutting first can split an echoed secret and leave its start
    (13 of a 17-character token, when the echo began near the limit) where redact no longer
    recognises it. `cut_short`: `text` is only the start of the answer (it was read up to a
    bound), so its end may be the start of a secret; that end is dropped first."""
    if cut_short:
        text = _drop_partial_secret_at_end(text, secrets)
    return " ".join(redact(text, secrets).split())[:limit]


def _drop_partial_secret_at_end(text: str, secrets) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            for length in range(len(secret) - 1, 0, -1):
                if text.endswith(secret[:length]):
                    text = text[:-length]
                    break
    return text

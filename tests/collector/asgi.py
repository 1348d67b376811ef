"""One request through an ASGI app in-process (no server, no socket): the debugger tests call
the real collector app this way where the peer or Host must be one a real socket on 127.0.0.1
cannot give."""


async def call(app, method: str, path: str, query: str = "", headers: dict = None, body: bytes = b"",
               host: str = "127.0.0.1:8088", client: str = "127.0.0.1", server: str = "127.0.0.1") -> tuple:
    """(status, body) of the app's answer to one whole request."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": host, **(headers or {})}.items()],
             "client": (client, 5555), "server": (server, 8088), "scheme": "http"}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

"""The live event debugger (issue 17): each event the collector receives, its contract result
and its fate, for the page at /debugger and a test API (docs/debugger.md).

store (bounded entries) <- inspect (the pipeline's decode, normalize and contracts, per event)
<- service (hooks in the app: its sink, its refusals) -> api (HTTP, server-sent events);
fates (the embedded warehouse, after each load). settings is the config's `debugger:` section.
"""

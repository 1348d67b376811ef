"""The collection API: the HTTP endpoint Segment, RudderStack and SignalSmith SDKs send to.

`python -m pipeline serve` (pipeline/serve.py) starts it. A request is checked and enriched by
pure code (collector.requests), limited per write key (collector.ratelimit), and handed off as
one record (a batch envelope, one JSON line) to a sink (collector.sinks): Pub/Sub, spooled
files, or in embedded mode a spool that collector.embedded loads into the warehouse through the
pipeline's own Beam graph. A 2xx answer means the record is durable in the sink.

Layers: pipeline/ uses collector/; collector/ uses transforms/; never the other way.
"""

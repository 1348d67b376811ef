"""Forwarding to destinations (webhooks, Pub/Sub): a side output of the pipeline.

model: the config's `destinations` section, checked and typed; mapping: the outgoing
payload built from paths of the event; secrets, netguard, signing: what a request carries and
where it may go; delivery: retries and backoff; senders: webhook and Pub/Sub clients;
stage: the Beam composite (select, batch per destination, deliver).
"""

"""Pub/Sub resource names, by Beam's own project-id rule (apache_beam.io.gcp.pubsub): the
command line and the config check them at launch for a clear exit 2."""
import re

PROJECT = r"[a-z][-a-z0-9:.]{4,61}[a-z0-9]"
SUBSCRIPTION = re.compile(rf"projects/{PROJECT}/subscriptions/[^/\s]{{3,255}}")
TOPIC = re.compile(rf"projects/{PROJECT}/topics/[^/\s]{{3,255}}")

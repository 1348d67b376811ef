"""Publish a newline-delimited JSON file to a Pub/Sub topic, one message a line; the topic
and a subscription are created when missing. Meant for the emulator (PUBSUB_EMULATOR_HOST).

    python scripts/publish.py samples/events.jsonl --project demo-project --topic events --subscription sluice
"""
import argparse
import os
import sys

from google.api_core import exceptions
from google.cloud import pubsub_v1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--project", default="demo-project")
    parser.add_argument("--topic", default="events")
    parser.add_argument("--subscription", default="sluice")
    args = parser.parse_args()
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("publish: set PUBSUB_EMULATOR_HOST (e.g. 127.0.0.1:8085); this script is for the emulator",
              file=sys.stderr)
        return 2
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(args.project, args.topic)
    subscription = subscriber.subscription_path(args.project, args.subscription)
    for create, kwargs in ((publisher.create_topic, {"name": topic}),
                           (subscriber.create_subscription, {"name": subscription, "topic": topic})):
        try:
            create(**kwargs)
        except exceptions.AlreadyExists:
            pass
    futures = []
    with open(args.path, "rb") as handle:
        for line in handle:
            data = line.rstrip(b"\r\n")
            if data:  # Pub/Sub refuses a message with neither data nor attributes
                futures.append(publisher.publish(topic, data))
    for future in futures:
        future.result(timeout=60)
    print(f"published {len(futures)} messages to {topic}; read them from {subscription}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

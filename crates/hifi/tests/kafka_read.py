"""Reads a Kafka topic from its start to its end (the high watermarks at start) with the
confluent-kafka client, an independent reader of what hifi's Kafka sink produced.
Prints one JSON line per record: partition, offset, key, headers and the value (parsed
when it is JSON).

Usage: python3 kafka_read.py BROKERS TOPIC
"""

import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition


def main() -> None:
    brokers, topic = sys.argv[1], sys.argv[2]
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "hifi-test-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    md = c.list_topics(topic, timeout=10)
    if md.topics[topic].error is not None:
        sys.exit(f"topic {topic}: {md.topics[topic].error}")
    left = {}
    assign = []
    for p in md.topics[topic].partitions:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if hi > lo:
            left[p] = hi
            assign.append(TopicPartition(topic, p, lo))
    c.assign(assign)
    deadline = time.monotonic() + 60
    while left and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            sys.exit(f"read error: {m.error()}")
        try:
            value = json.loads(m.value())
        except ValueError:
            value = m.value().decode("utf-8", "replace")
        print(
            json.dumps(
                {
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": None if m.key() is None else m.key().decode("utf-8", "replace"),
                    "headers": {k: v.decode("utf-8", "replace") for k, v in (m.headers() or [])},
                    "value": value,
                }
            )
        )
        if m.offset() + 1 >= left.get(m.partition(), 0):
            left.pop(m.partition(), None)
    c.close()
    if left:
        sys.exit(f"did not reach the end of partitions {sorted(left)} within 60 s")


if __name__ == "__main__":
    main()

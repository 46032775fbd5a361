"""Shared by every component: settings, the message schema, Kafka and MongoDB helpers."""

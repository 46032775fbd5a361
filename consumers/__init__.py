"""Kafka consumers: the inference consumer and the MongoDB writer."""

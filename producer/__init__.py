"""Simulated IoT cameras publishing CIFAR images to Kafka (``python -m producer``)."""

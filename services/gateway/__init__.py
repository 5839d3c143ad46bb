"""The gateway service: REST API, listening page, events to NATS."""

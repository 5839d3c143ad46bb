"""The event bus: NATS JetStream publishing and consuming of protobuf events."""

"""Generated protobuf modules of the v1 event schemas."""

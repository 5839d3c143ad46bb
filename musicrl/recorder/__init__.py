"""The recorder: a durable JetStream pull consumer that writes events to the Parquet dataset."""

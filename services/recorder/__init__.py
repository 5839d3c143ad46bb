"""The recorder service: the event stream into the Parquet dataset."""

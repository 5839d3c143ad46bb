"""Data at rest: the clip store, the recorded event dataset and its training snapshots."""

"""Data at rest: the clip store and, later, the event dataset and its snapshots."""

"""Deployables: thin wiring of the core package into servers."""

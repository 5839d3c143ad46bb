"""The gateway: generation jobs, A/B comparisons and feedback over REST, and the listening page."""

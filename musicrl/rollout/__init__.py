"""Policy rollout: the routing table between the stable and the canary policy."""

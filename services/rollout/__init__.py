"""The rollout controller service: judges the canary on live votes and promotes or rolls it back."""

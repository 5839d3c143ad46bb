"""Rewards: text adherence (CLAP), quality (a MOS predictor) and user preference (a Bradley–Terry model)."""

"""The reward service: text adherence, quality and user preference over the V2 inference protocol."""

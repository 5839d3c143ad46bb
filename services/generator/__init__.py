"""The generator service: the policy behind the V2 inference protocol."""

"""Helpers shared by the test tiers (fake client, integration, benchmarks): one place each."""

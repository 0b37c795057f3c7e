"""seg export package."""

"""seg toolkit package."""

"""seg train package."""

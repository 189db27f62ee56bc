"""The Week-1 stages as plain functions; the only core layer that knows the whole pipeline."""

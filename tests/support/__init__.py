"""Test support shared by every tier (process launchers, waiting helpers)."""

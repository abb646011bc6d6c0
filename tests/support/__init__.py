"""Test support shared by every tier (STYLE.md §1): doubles, topologies, launchers."""

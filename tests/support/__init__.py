"""Test support shared by every tier: process launchers, waiting helpers, API test doubles
(fake_km.py) and small topologies."""

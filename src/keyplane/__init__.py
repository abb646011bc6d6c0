"""keyplane: a virtualized control and key management plane for QKD networks.

Implements the operational model of Lopez et al., "An Enhanced Virtualized Control and
Key Management Model for QKD Networks" (IEEE Network 2025) over an emulated QKD
physical layer. See docs/architecture.md for the map.
"""

__version__ = "0.1.0"

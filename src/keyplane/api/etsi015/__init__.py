"""ETSI GS QKD 015: the SDN agent of every node and the SDN Controller's RESTCONF side."""

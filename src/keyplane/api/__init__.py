"""Application and SDN interfaces of a keyplane node.

- :mod:`keyplane.api.etsi014`: ETSI GS QKD 014 (REST key delivery) server.
- :mod:`keyplane.api.etsi004`: ETSI GS QKD 004 (stream key delivery) server, JSON over HTTPS.
- :mod:`keyplane.api.etsi015`: ETSI GS QKD 015 SDN agent (RESTCONF) of the node.
- :mod:`keyplane.api.server`: one HTTPS app per KM mounting both, and a mutual-TLS runner.
- :mod:`keyplane.api.client`: the client SDK (sync and async) for both.
- :mod:`keyplane.api.errors`: the one table mapping domain exceptions to wire codes.

Servers are thin (DESIGN.md §3): they parse, call one method of the node's key manager
(:class:`keyplane.keymanager.interface.ApplicationService`) and map the result or the
exception to the standard's wire form. They hold no key state.
"""

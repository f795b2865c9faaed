"""XMPP protocol layer: namespaces, JIDs, stream parsing and error builders.

Everything here is pure: bytes and lxml elements in, bytes and lxml elements out. Sockets,
TLS and the session state machine live elsewhere and use these modules.
"""

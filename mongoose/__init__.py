"""The XMPP server: protocol, sessions, routing, modules, storage, config, CLI.

These are the callbacks and feature code; the generic actor runtime lives in `otp` and the
supervision trees that start them in `supervisors`.
"""

"""The server's supervision trees, written as child specs for `otp`'s supervisor."""

"""Redis with a password, an ACL user, TLS and Sentinel, against real clusters (issue 9); the leak check."""

"""The comparison gateway (see issue: the gateway)."""

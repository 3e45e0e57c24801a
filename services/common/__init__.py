"""The runtime every Versus service stands on: config, errors, metrics, batching, server bootstrap."""

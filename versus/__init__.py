"""Versus: generated protobuf/gRPC code (``versus.<service>.v1``) and the ``versus`` command line."""

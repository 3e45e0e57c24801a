"""Versus contracts: the code generated from ``protos/`` (``versus.<service>.v1``); protobuf and grpcio only."""

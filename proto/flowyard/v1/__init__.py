"""Generated gRPC and protobuf modules of the Flowyard API (package ``flowyard.v1``).

Regenerate with ``make protos``; never edit the ``*_pb2*`` files by hand.
"""

"""The native gRPC server: gRPC over our own HTTP/2 on the frontend's event loop (``--grpc-server native``)."""

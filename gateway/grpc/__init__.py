"""gRPC transport: the inference.GRPCInferenceService servicer and its generated stubs."""

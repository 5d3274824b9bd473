"""Generated protobuf and gRPC stubs (make protos). Never edited by hand."""

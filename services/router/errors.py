"""A request the router refuses, with the gRPC code and a message a person can act on."""
import grpc


class RequestRejected(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

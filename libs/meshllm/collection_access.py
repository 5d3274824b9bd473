"""Which retrieval collections a tenant's policy lets it use (Policy.allowed_collections):
the retrieval service and the router both ask."""
from meshllm.api.auth.v1 import auth_pb2

ALL_COLLECTIONS = "*"
"""In allowed_collections: every collection the tenant has."""


def may_use_collection(policy: auth_pb2.Policy, name: str) -> bool:
    allowed = policy.allowed_collections
    return ALL_COLLECTIONS in allowed or name in allowed

"""The dev tenant's policy for a benchmark: what a bench measures decides what runs on its
calls. The stream-path benches measure the mesh without moderation (bench.moderation_overhead
measures moderation's own cost)."""
from google.protobuf import json_format

from deploy.local.mesh import LocalMesh
from meshllm.api.auth.v1 import auth_pb2, auth_pb2_grpc
from meshllm.api.moderation.v1 import moderation_pb2
from meshllm.api_key import keyed_channel
from services.auth.dev_tenant import DEV_TENANT

UNMODERATED = moderation_pb2.ModerationPolicy(input_disabled=True, output_disabled=True)


def unmoderated(policy: auth_pb2.Policy | None = None) -> auth_pb2.Policy:
    policy = auth_pb2.Policy() if policy is None else auth_pb2.Policy.FromString(
        policy.SerializeToString())
    policy.moderation.CopyFrom(UNMODERATED)
    return policy


def open_tenant_policy_env(policy: auth_pb2.Policy) -> tuple[tuple[str, str], ...]:
    """The control plane's setting that gives an open tenant `policy`."""
    return (("MESHLLM_CONTROLPLANE_OPEN_TENANT_POLICY", json_format.MessageToJson(policy)),)


async def set_dev_tenant_policy(mesh: LocalMesh, policy: auth_pb2.Policy) -> None:
    async with keyed_channel(f"127.0.0.1:{mesh.options.ports.public}", mesh.api_key) as channel:
        await auth_pb2_grpc.AuthServiceStub(channel).UpdatePolicy(auth_pb2.UpdatePolicyRequest(
            tenant_id=DEV_TENANT, policy=policy), timeout=10)

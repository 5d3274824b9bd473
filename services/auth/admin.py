"""The admin API as plain Python: tenants, keys, policies and usage, checked and stored."""
from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from meshllm.api.auth.v1 import auth_pb2
from meshllm.errors import CallRefused
from services.auth import store as stores
from services.auth.keys import is_key_id, new_key
from services.auth.policy import (check_policy, check_tenant_id, default_policy,
                                  next_period_start, period_of)

_MAX_NAME = 128


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def tenant_message(record: stores.TenantRecord) -> auth_pb2.Tenant:
    return auth_pb2.Tenant(id=record.id, display_name=record.display_name,
                           create_time=_timestamp(record.created_at),
                           policy=auth_pb2.Policy.FromString(record.policy),
                           policy_version=record.policy_version)


def key_message(record: stores.KeyRecord) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(id=record.id, tenant_id=record.tenant_id, name=record.name,
                           role=record.role, prefix=record.prefix,
                           create_time=_timestamp(record.created_at),
                           revoke_time=_timestamp(record.revoked_at))


def _not_found(what: str, field: str) -> CallRefused:
    return CallRefused(grpc.StatusCode.NOT_FOUND, f"{what} does not exist", reason="NOT_FOUND",
                       field=field)


def _check_name(name: str, field: str) -> None:
    if len(name) > _MAX_NAME or not name.isprintable():
        raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{field} must be printable and at most {_MAX_NAME} characters",
                          reason="INVALID_NAME", field=field)


class Admin:
    def __init__(self, store: stores.AuthStore):
        self._store = store

    async def create_tenant(self, tenant_id: str, display_name: str,
                            policy: auth_pb2.Policy | None) -> stores.TenantRecord:
        check_tenant_id(tenant_id)
        _check_name(display_name, "display_name")
        policy = policy if policy is not None else default_policy()
        check_policy(policy)
        record = stores.TenantRecord(
            id=tenant_id, display_name=display_name or tenant_id, created_at=datetime.now(UTC),
            policy=policy.SerializeToString(deterministic=True), policy_version=1)
        try:
            await self._store.create_tenant(record)
        except stores.TenantExists:
            raise CallRefused(grpc.StatusCode.ALREADY_EXISTS,
                              f"tenant {tenant_id!r} already exists", reason="TENANT_EXISTS",
                              field="tenant_id") from None
        return record

    async def tenant(self, tenant_id: str) -> stores.TenantRecord:
        check_tenant_id(tenant_id)
        record = await self._store.get_tenant(tenant_id)
        if record is None:
            raise _not_found(f"tenant {tenant_id!r}", "tenant_id")
        return record

    async def tenants(self) -> list[stores.TenantRecord]:
        return await self._store.list_tenants()

    async def create_key(self, tenant_id: str, name: str,
                         role: int) -> tuple[stores.KeyRecord, str]:
        """The stored key and its secret, which exists only in this return value."""
        await self.tenant(tenant_id)
        _check_name(name, "name")
        if role == auth_pb2.API_KEY_ROLE_UNSPECIFIED:
            role = auth_pb2.API_KEY_ROLE_CLIENT
        if role not in (auth_pb2.API_KEY_ROLE_CLIENT, auth_pb2.API_KEY_ROLE_ADMIN):
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT, f"role {role} is unknown",
                              reason="INVALID_ROLE", field="role")
        key = new_key()
        record = stores.KeyRecord(id=key.key_id, tenant_id=tenant_id, name=name, role=role,
                                  prefix=key.prefix, secret_hash=key.secret_hash,
                                  created_at=datetime.now(UTC), revoked_at=None)
        await self._store.create_key(record)
        return record, key.secret

    async def keys(self, tenant_id: str) -> list[stores.KeyRecord]:
        await self.tenant(tenant_id)
        return await self._store.list_keys(tenant_id)

    async def revoke_key(self, key_id: str) -> stores.KeyRecord:
        if not is_key_id(key_id):
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"key_id must be a key's id (the 12 lowercase letters and digits "
                              f"after mk_live_), got {key_id[:40]!r}",
                              reason="INVALID_KEY_ID", field="key_id")
        record = await self._store.revoke_key(key_id, datetime.now(UTC))
        if record is None:
            raise _not_found(f"API key {key_id!r}", "key_id")
        return record

    async def update_policy(self, tenant_id: str, policy: auth_pb2.Policy | None,
                            expected_version: int = 0) -> int:
        await self.tenant(tenant_id)
        if expected_version < 0:
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"expected_policy_version must be 0 (replace whatever is there) "
                              f"or a version GetPolicy returned, got {expected_version}",
                              reason="INVALID_POLICY_VERSION", field="expected_policy_version")
        if policy is None:
            # Not an empty policy: that would lift every limit and budget by omission.
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                              "policy is required: UpdatePolicy replaces the whole policy "
                              "(send an empty one to lift every limit)",
                              reason="INVALID_POLICY", field="policy")
        check_policy(policy)
        try:
            return await self._store.update_policy(
                tenant_id, policy.SerializeToString(deterministic=True), expected_version)
        except stores.PolicyVersionConflict as conflict:
            raise CallRefused(
                grpc.StatusCode.ABORTED,
                f"{conflict}: it changed since you read it; read it again (GetPolicy) and "
                "apply your change to that", reason="POLICY_VERSION_CONFLICT",
                field="expected_policy_version") from None

    async def usage(self, request: auth_pb2.GetUsageRequest) -> auth_pb2.GetUsageResponse:
        tenant = await self.tenant(request.tenant_id)
        period = request.period or period_of(datetime.now(UTC))
        try:
            resets = next_period_start(period)
        except ValueError:
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"period must be a month as YYYY-MM, got {period[:40]!r}",
                              reason="INVALID_PERIOD", field="period") from None
        _check_name(request.model, "model")
        _check_name(request.group_by_label, "group_by_label")
        rows = [auth_pb2.UsageRow(model=row.model, label_value=row.label_value,
                                  requests=row.requests, prompt_tokens=row.prompt_tokens,
                                  completion_tokens=row.completion_tokens,
                                  cost_micro_usd=row.cost_micro_usd)
                for row in await self._store.usage(tenant.id, period, request.model,
                                                   request.group_by_label)]
        total = auth_pb2.UsageRow(
            requests=sum(r.requests for r in rows),
            prompt_tokens=sum(r.prompt_tokens for r in rows),
            completion_tokens=sum(r.completion_tokens for r in rows),
            cost_micro_usd=sum(r.cost_micro_usd for r in rows))
        spent, reserved = await self._store.budget_state(tenant.id, period, "tenant")
        response = auth_pb2.GetUsageResponse(period=period, rows=rows, total=total,
                                             reserved_micro_usd=spent + reserved,
                                             budget_resets=_timestamp(resets))
        policy = auth_pb2.Policy.FromString(tenant.policy)
        if policy.HasField("monthly_budget_micro_usd"):
            response.budget_micro_usd = policy.monthly_budget_micro_usd
        return response

"""The window counters in Redis, so that one limit holds across every auth replica.

Each call is one EVALSHA of a Lua script: Redis runs a script alone, so the prune, the check and
the record of a take cannot interleave with another replica's (no slack: concurrent takes admit
exactly the limit). Scripts read Redis's own TIME, so every replica shares one clock whatever
its host's clock says. The first use of a script after Redis starts (its script cache is empty)
meets NOSCRIPT and is answered with one EVAL, which caches the script again.

Keys, under `key_prefix` with the caller's key as a hash tag (one cluster slot per key):
  <prefix>{<key>}:log     sorted set, entry id -> admitted at (µs, Redis time)
  <prefix>{<key>}:amounts hash, "e:<entry id>" -> amount, "used" -> their sum
  <prefix>{<key>}:slots   sorted set, slot id -> lease ends at (µs, Redis time)
Each expires (PEXPIRE) when its newest entry leaves the window or its last lease ends."""
import asyncio
import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio
from redis.backoff import NoBackoff
from redis.asyncio.retry import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.auth.window_counters import (CountersUnavailable, Decision, check_adjust,
                                           check_slot, check_take)

# The edge gives the whole auth check 250 ms, so a dead Redis must be noticed well within it.
DEFAULT_TIMEOUT_SECONDS = 0.1
DEFAULT_MAX_CONNECTIONS = 16

T = TypeVar("T")

# Lua numbers are doubles and redis.call formats them with %.14g, which rounds a time in µs
# (16 digits); `int` formats them exactly.
_CLOCK = """
local function int(x) return string.format('%d', x) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

_PRUNE = """
local function fields_of(ids)
  local fields = {}
  for i, id in ipairs(ids) do fields[i] = 'e:' .. id end
  return fields
end
-- Drops the entries admitted at or before `cutoff` (in batches: unpack has a stack limit) and
-- returns the sum of those left.
local function prune(log, amounts, cutoff)
  while true do
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', int(cutoff), 'LIMIT', 0, 512)
    if #old == 0 then break end
    local fields = fields_of(old)
    local freed = 0
    for _, amount in ipairs(redis.call('HMGET', amounts, unpack(fields))) do
      freed = freed + (tonumber(amount) or 0)
    end
    redis.call('ZREM', log, unpack(old))
    redis.call('HDEL', amounts, unpack(fields))
    redis.call('HINCRBY', amounts, 'used', int(-freed))
  end
  if redis.call('EXISTS', log) == 0 then
    redis.call('DEL', amounts)
    return 0
  end
  return tonumber(redis.call('HGET', amounts, 'used') or 0)
end
"""

# KEYS: log, amounts. ARGV: amount, limit, window (µs), entry id.
# Returns {allowed, used, retry after (µs), never fits}.
_TAKE = _CLOCK + _PRUNE + """
local log, amounts = KEYS[1], KEYS[2]
local amount, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local entry = ARGV[4]
local now = now_us()
local used = prune(log, amounts, now - window)
if redis.call('ZSCORE', log, entry) then return {1, used, 0, 0} end
if amount > limit then return {0, used, window, 1} end
if used + amount <= limit then
  redis.call('ZADD', log, int(now), entry)
  redis.call('HSET', amounts, 'e:' .. entry, ARGV[1])
  used = redis.call('HINCRBY', amounts, 'used', ARGV[1])
  local ttl = int(math.ceil(window / 1000))
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', amounts, ttl)
  return {1, used, 0, 0}
end
-- Walk the oldest entries until enough would have left for this amount to fit.
local excess, freed, start = used + amount - limit, 0, 0
while true do
  local batch = redis.call('ZRANGE', log, start, start + 255, 'WITHSCORES')
  if #batch == 0 then break end
  local ids = {}
  for i = 1, #batch, 2 do ids[#ids + 1] = batch[i] end
  local batch_amounts = redis.call('HMGET', amounts, unpack(fields_of(ids)))
  for j = 1, #ids do
    freed = freed + (tonumber(batch_amounts[j]) or 0)
    if freed >= excess then return {0, used, tonumber(batch[2 * j]) + window - now, 0} end
  end
  start = start + 256
end
return {0, used, window, 0}
"""

# KEYS: amounts. ARGV: entry id, new amount. The entry keeps its time in the log.
_ADJUST = _CLOCK + """
local field = 'e:' .. ARGV[1]
local old = redis.call('HGET', KEYS[1], field)
if not old then return 0 end
redis.call('HSET', KEYS[1], field, ARGV[2])
redis.call('HINCRBY', KEYS[1], 'used', int(tonumber(ARGV[2]) - tonumber(old)))
return 1
"""

# KEYS: slots. ARGV: slot id, limit, lease (µs). Returns like _TAKE.
_ACQUIRE_SLOT = _CLOCK + """
local slots, slot = KEYS[1], ARGV[1]
local limit, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
redis.call('ZREMRANGEBYSCORE', slots, '-inf', int(now))
local held = redis.call('ZCARD', slots)
if redis.call('ZSCORE', slots, slot) or held < limit then
  redis.call('ZADD', slots, int(now + lease), slot)
  local last = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', slots, int(math.ceil((tonumber(last[2]) - now) / 1000)))
  return {1, redis.call('ZCARD', slots), 0, 0}
end
if limit < 1 then return {0, held, lease, 1} end
local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
return {0, held, tonumber(first[2]) - now, 0}
"""

# What "Redis cannot answer now" looks like; anything else (a script error) is a bug to see.
# ReadOnlyError: a replica promoted late after a failover.
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)


@dataclass(frozen=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> "_Script":
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


_TAKE_SCRIPT = _Script.of(_TAKE)
_ADJUST_SCRIPT = _Script.of(_ADJUST)
_ACQUIRE_SLOT_SCRIPT = _Script.of(_ACQUIRE_SLOT)


class RedisWindowCounters:
    """The WindowCounters contract on one Redis, shared by every auth replica that names it."""

    def __init__(self, url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 key_prefix: str = "meshllm:counters:"):
        # A bounded pool: a burst of calls queues for a few warm connections instead of opening
        # one each (measured here: 200 concurrent calls, cold, 250 ms unbounded, 60 ms with 16).
        # One immediate retry on a broken connection (a pooled socket Redis closed when it
        # restarted), none on a timeout; every script is idempotent, so a retry counts once.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None,
            socket_connect_timeout=timeout_seconds, socket_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        self._redis = redis.asyncio.Redis.from_pool(pool)
        self._timeout_seconds = timeout_seconds
        kwargs = pool.connection_kwargs
        self._where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"  # never the password
        self._prefix = key_prefix

    async def take(self, key: str, amount: int, limit: int, window_seconds: float,
                   entry_id: str) -> Decision:
        check_take(amount, limit, window_seconds)
        reply = await self._run(_TAKE_SCRIPT, [self._key(key, "log"), self._key(key, "amounts")],
                                [amount, limit, _micros(window_seconds), entry_id])
        return _decision(reply)

    async def adjust(self, key: str, entry_id: str, new_amount: int) -> None:
        check_adjust(new_amount)
        await self._run(_ADJUST_SCRIPT, [self._key(key, "amounts")], [entry_id, new_amount])

    async def acquire_slot(self, key: str, slot_id: str, limit: int,
                           lease_seconds: float) -> Decision:
        check_slot(limit, lease_seconds)
        reply = await self._run(_ACQUIRE_SLOT_SCRIPT, [self._key(key, "slots")],
                                [slot_id, limit, _micros(lease_seconds)])
        return _decision(reply)

    async def release_slot(self, key: str, slot_id: str) -> None:
        await self._within_deadline(self._redis.zrem(self._key(key, "slots"), slot_id))

    async def close(self) -> None:
        await self._redis.aclose()

    def _key(self, key: str, part: str) -> str:
        return f"{self._prefix}{{{key}}}:{part}"

    async def _run(self, script: _Script, keys: list[str], args: list) -> list[int]:
        return await self._within_deadline(self._eval(script, keys, args))

    async def _eval(self, script: _Script, keys: list[str], args: list) -> list[int]:
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._redis.eval(script.source, len(keys), *keys, *args)

    async def _within_deadline(self, call: Awaitable[T]) -> T:
        """One deadline over the pool wait, the connect, the retry and the reply. Cancelling
        redis-py mid-command closes that connection, so no late reply is read by another call.
        A call cut off after Redis ran it still counts there (fail-closed callers refuse a
        request that was counted: conservative), and a retry with the same id counts once."""
        try:
            async with asyncio.timeout(self._timeout_seconds):
                return await call
        except (*_UNAVAILABLE, TimeoutError) as error:
            reason = str(error) or f"no answer within {self._timeout_seconds} s"
            raise CountersUnavailable(
                f"redis at {self._where} is unavailable: {reason}") from error


def _micros(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))


def _decision(reply: list[int]) -> Decision:
    allowed, used, retry_after_us, never_fits = reply
    return Decision(bool(allowed), int(used), int(retry_after_us) / 1_000_000, bool(never_fits))

"""The GCRA step in Redis: one Lua script, so a decision is atomic and one round trip.

KEYS[1] is the user's key, KEYS[2] the tenant's ceiling key (same hash tag, so both live in
one Redis Cluster slot). ARGV: the user limit's T and tau, then the ceiling's (microseconds;
a T of 0 = no ceiling). The time is Redis's own (``TIME``), so every replica measures against
one clock. A request is allowed only when both keys allow it, and only then are both moved
on; a refusal writes nothing. Each key expires when its budget is whole again, so idle users
cost no memory.

Returns ``{allowed, scope, retry_after_us, remaining, reset_us, ceiling_remaining}``: scope
1 = the user's limit refused, 2 = the tenant's ceiling refused, 0 = allowed; remaining counts
the requests that could follow at once (the ceiling's: -1 when there is none).
"""

from __future__ import annotations

import hashlib

__all__ = ["GCRA_SCRIPT", "GCRA_SHA"]

GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ut, utau = tonumber(ARGV[1]), tonumber(ARGV[2])
local utat = tonumber(redis.call('GET', KEYS[1]) or 0)
if utat < now then utat = now end
local unew = utat + ut
if unew - utau > now then
  return {0, 1, math.floor(unew - utau - now), 0, math.floor(utat - now), -1}
end
local ct, ctau = tonumber(ARGV[3]), tonumber(ARGV[4])
local cleft = -1
if ct > 0 then
  local ctat = tonumber(redis.call('GET', KEYS[2]) or 0)
  if ctat < now then ctat = now end
  local cnew = ctat + ct
  if cnew - ctau > now then
    return {0, 2, math.floor(cnew - ctau - now), 0, math.floor(utat - now), 0}
  end
  cleft = math.floor((now + ctau - cnew) / ct + 0.000001)
  redis.call('SET', KEYS[2], string.format('%d', cnew), 'PX', math.ceil((cnew - now) / 1000) + 1)
end
redis.call('SET', KEYS[1], string.format('%d', unew), 'PX', math.ceil((unew - now) / 1000) + 1)
return {1, 0, 0, math.floor((now + utau - unew) / ut + 0.000001), math.floor(unew - now), cleft}
"""

GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()

"""The time buckets that Redis holds are counted in: Lua shared by every limits script.

Holds with an id are counted in the field b:<bucket> of the time bucket they were made in, a
quarter of hold_life() wide; the five latest buckets count, so a hold never settled stops counting
between 1 and 1.25 lifetimes after it was made (a process killed mid-request frees its holds) at no
cost per call. 'o' is the latest bucket a hold was made in: when a later one opens, the fields of
those between that no longer count are deleted (every b: field is within 'o' - 4 to 'o'), however
long the key went without a hold. The buckets go by Redis' clock (TIME), not each host's: one
host's clock a little ahead of another's would hold in a bucket the other does not count yet, and
both could take the last of a budget.
"""
from __future__ import annotations

from proxy.redis_pipe import Script

# Every redis.call costs about a microsecond of Redis' one thread: these make none but TIME, HSET
# 'o' and the HINCRBY the caller would make anyway.
_PRELUDE = """
local function bucket_now(life)  -- Redis' clock: its seconds (a string) and the current bucket
  local clock = redis.call('TIME')
  return clock[1], math.floor((tonumber(clock[1]) + tonumber(clock[2]) / 1e6) / (life / 4))
end
local function counted(bucket)  -- the fields HMGET reads first: used, held, o, the five buckets
  return {'used', 'held', 'o', 'b:' .. (bucket - 4), 'b:' .. (bucket - 3), 'b:' .. (bucket - 2),
          'b:' .. (bucket - 1), 'b:' .. bucket}
end
local function held_in(v)  -- what is held, of those fields' values
  return (tonumber(v[2]) or 0) + (tonumber(v[4]) or 0) + (tonumber(v[5]) or 0) + (tonumber(v[6]) or 0)
         + (tonumber(v[7]) or 0) + (tonumber(v[8]) or 0)
end
local function hold_in(key, v, bucket, amount)  -- amount held in bucket; v: counted()'s values
  local last = tonumber(v[3])
  if not last or bucket > last then  -- a new bucket: the fields of those no longer counted go
    if last then
      local gone = {}
      for b = last - 4, math.min(last, bucket - 5) do gone[#gone + 1] = 'b:' .. b end
      if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
    end
    redis.call('HSET', key, 'o', bucket)
    v[3] = bucket
  end
  redis.call('HINCRBY', key, 'b:' .. bucket, string.format('%d', amount))
end
"""


def bucket_script(text: str) -> Script:
    """A script that may call bucket_now, counted, held_in and hold_in."""
    return Script(_PRELUDE + text)

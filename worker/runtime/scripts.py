"""The ledger's Lua scripts, each atomic in Redis: moving an object from one record to
another keeps the batch counters exact (the old record's contributions are removed, the
new one's added). :class:`~worker.runtime.ledger.Ledger` registers and calls them."""

from __future__ import annotations

from worker.runtime.records import CODE_TAGS

# Lua shared by the scripts below: parse a record, and move one object from its old
# record to a new one while accumulating the batch counter changes in ``delta``.
LUA_RECORDS = (
    "local code_names = {"
    + ", ".join(f"{tag}='{name}'" for name, tag in CODE_TAGS.items())
    + "}\n"
    + """
local function split(s)
  local out = {}
  for part in (s .. '|'):gmatch('([^|]*)|') do out[#out + 1] = part end
  return out
end
local names = {q='queued', r='running', d='done', s='skipped', f='failed'}
local function terminal(c) return c == 'd' or c == 's' or c == 'f' end
local function code(r)
  if r[2] == '' and r[1] == 'd' then return 'compressed' end
  return code_names[r[2]] or r[2]
end
local delta = {}
local examples = {}
local finished, started = false, false
local function add(field, n) delta[field] = (delta[field] or 0) + n end
-- per policy rule (record field 14, base 36): objects, and bytes of those written
local function rule(r, sign)
  local id = r[14]
  if id == nil or id == '' then return end
  add('rule:' .. id, sign)
  if tonumber(r[4], 36) > 0 then
    add('rule_in:' .. id, sign * tonumber(r[3], 36))
    add('rule_out:' .. id, sign * tonumber(r[4], 36))
  end
end
local function move(objects, messages, field, old, value, message, retention)
  if old then
    local o = split(old)
    add(names[o[1]], -1)
    if terminal(o[1]) then
      add('bytes_in', -tonumber(o[3], 36))
      add('bytes_out', -tonumber(o[4], 36))
      if tonumber(o[4], 36) > 0 then add('written_in', -tonumber(o[3], 36)) end
      add('code:' .. code(o), -1)
      rule(o, -1)
    end
  end
  local n = split(value)
  redis.call('HSET', objects, field, value)
  redis.call('EXPIRE', objects, retention)
  add(names[n[1]], 1)
  if terminal(n[1]) then
    add('bytes_in', tonumber(n[3], 36))
    add('bytes_out', tonumber(n[4], 36))
    if tonumber(n[4], 36) > 0 then add('written_in', tonumber(n[3], 36)) end
    add('code:' .. code(n), 1)
    rule(n, 1)
    finished = true
    if n[1] == 'f' then examples['example:' .. code(n)] = field end
  end
  if n[1] == 'r' then started = true end
  if message ~= '' then
    redis.call('HSET', messages, field, message)
    redis.call('EXPIRE', messages, retention)
  elseif old then
    redis.call('HDEL', messages, field)
  end
end
local function flush(counts, batch, now, retention)
  for field, n in pairs(delta) do
    if n ~= 0 then redis.call('HINCRBY', counts, field, n) end
  end
  for field, key in pairs(examples) do redis.call('HSET', batch, field, key) end
  if finished then redis.call('HSET', counts, 'finished_at', now) end
  if started then redis.call('HSETNX', counts, 'started_at', now) end
  redis.call('EXPIRE', counts, retention)
end
"""
)

# Sets one record unless a guard says it is no longer this delivery's, and puts the key
# of a record set done, or skipped other than by a cancel, on the batch's outbox, where
# the archiver (archive.py) finds it. A guard (``=`` and the ETag a delivery started
# with) leaves a record alone that a newer version of the object queued meanwhile: that
# version is the object's job now. Returns 1 (set) or 0 (superseded, left alone).
LUA_SET = """
-- done and skipped records go out to the shards; failed ones (`retry`) and those
-- skipped because the batch was cancelled (`resume`) stay
local function archived(r)
  return r[1] == 'd' or (r[1] == 's' and code(r) ~= 'cancelled')
end
local pushed = false
local function set(objects, messages, outbox, field, value, message, guard, retention)
  local old = redis.call('HGET', objects, field)
  if old and guard ~= '' then
    local o = split(old)
    if o[1] == 'q' and o[10] ~= guard:sub(2) then return 0 end
  end
  move(objects, messages, field, old, value, message, retention)
  if outbox ~= '' and archived(split(value)) then
    redis.call('RPUSH', outbox, field)
    pushed = outbox
  end
  return 1
end
local function expire_outbox(retention)
  if pushed then redis.call('EXPIRE', pushed, retention) end
end
"""

# Sets records (KEYS: counts, batch, outbox, then objects/messages shard per item;
# ARGV: retention, now, outbox ('1': push done keys), then field/value/message/guard per
# item), keeping the counters exact and the latest failed key per code as an example
# (batch hash, ``example:{code}``); see LUA_SET. Returns per item 1 (set) or 0
# (superseded, left alone).
TRANSITION = (
    LUA_RECORDS
    + LUA_SET
    + """
local retention, now = ARGV[1], ARGV[2]
local outbox = ARGV[3] == '1' and KEYS[3] or ''
local result = {}
for i = 1, (#KEYS - 3) / 2 do
  result[i] = set(KEYS[2 * i + 2], KEYS[2 * i + 3], outbox, ARGV[4 * i], ARGV[4 * i + 1],
                  ARGV[4 * i + 2], ARGV[4 * i + 3], retention)
end
expire_outbox(retention)
flush(KEYS[1], KEYS[2], now, retention)
return result
"""
)

# The start of one delivery of an object, in one step (KEYS: claim, objects shard,
# messages shard, counts, batch, breaker; ARGV: owner, claim seconds, field, ETag (short,
# '' if unknown), retention, now, now in base 36, worker tag, '1' to heed the breaker).
# Returns what the delivery does next:
# - {'paused', breaker hash as a flat list}: storage fails across objects; nothing taken
# - {'held', holder}: another delivery holds the object's claim
# - {'duplicate', record, message}: finished already for this ETag (claimed)
# - {'cancelled', record or ''}: the batch is cancelled (claimed)
# - {'was_running', record}: the last delivery left it running: died, or cut off by a
#   Redis outage; the caller decides (claimed)
# - {'started', record}: claimed and recorded running, its attempts counted
BEGIN = (
    LUA_RECORDS
    + """
local owner, ttl, field, etag = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retention, now, now36, worker = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if ARGV[9] == '1' and redis.call('EXISTS', KEYS[6]) == 1 then
  return {'paused', redis.call('HGETALL', KEYS[6])}
end
if not redis.call('SET', KEYS[1], owner, 'NX', 'EX', ttl) then
  return {'held', redis.call('GET', KEYS[1]) or ''}
end
local objects, messages = KEYS[2], KEYS[3]
local old = redis.call('HGET', objects, field)
local o = old and split(old)
if o and terminal(o[1]) and (etag == '' or o[10] == etag) then
  return {'duplicate', old, redis.call('HGET', messages, field) or ''}
end
if redis.call('HEXISTS', KEYS[5], 'cancelled') == 1 then return {'cancelled', old or ''} end
if o and o[1] == 'r' then return {'was_running', old} end
local function base36(n)
  local digits, out = '0123456789abcdefghijklmnopqrstuvwxyz', ''
  repeat
    local rest = n % 36
    out = digits:sub(rest + 1, rest + 1) .. out
    n = math.floor(n / 36)
  until n == 0
  return out
end
local attempts, lost = 1, ''
if o then
  attempts = (tonumber(o[5], 36) or 0) + 1
  if o[12] and o[12] ~= '0' then lost = o[12] end
end
-- as Record(state='running', ...).encode() writes it
local value = 'r||0|0|' .. base36(attempts) .. '|||0|' .. worker .. '|' .. etag .. '|'
  .. now36
if lost ~= '' then value = value .. '|' .. lost end
move(objects, messages, field, old, value, '', retention)
flush(KEYS[4], KEYS[5], now, retention)
return {'started', value}
"""
)

# The end of one delivery of an object, in one step (KEYS: counts, batch, outbox, objects
# shard, messages shard, claim, breaker outcomes; ARGV: retention, now, outbox ('1': push
# done keys), field, value, message, guard, claim owner ('' to keep the claim), breaker
# outcome ('' for none), outcomes kept, their lifetime, then stage/seconds pairs to add
# to the batch's ``stage:`` counters when the record is set). Sets the record (see
# LUA_SET), gives the claim back if the owner still holds it, and notes what storage did
# for the breaker. Returns 1 (set) or 0 (superseded, left alone).
FINISH = (
    LUA_RECORDS
    + LUA_SET
    + """
local retention, now = ARGV[1], ARGV[2]
local outbox = ARGV[3] == '1' and KEYS[3] or ''
local result = set(KEYS[4], KEYS[5], outbox, ARGV[4], ARGV[5], ARGV[6], ARGV[7], retention)
expire_outbox(retention)
if result == 1 then
  for i = 12, #ARGV, 2 do
    redis.call('HINCRBYFLOAT', KEYS[1], 'stage:' .. ARGV[i], ARGV[i + 1])
  end
end
flush(KEYS[1], KEYS[2], now, retention)
if ARGV[8] ~= '' and redis.call('GET', KEYS[6]) == ARGV[8] then redis.call('DEL', KEYS[6]) end
if ARGV[9] ~= '' then
  redis.call('LPUSH', KEYS[7], ARGV[9])
  redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[10]) - 1)
  redis.call('EXPIRE', KEYS[7], ARGV[11])
end
return result
"""
)

# Commits one archive shard (KEYS: batch hash, outbox, then objects/messages shard per
# record in the shard; ARGV: the shard number expected next, outbox entries to drop, '1'
# if a shard was written ('0': only stale entries dropped), s3://bucket/prefix/ of the
# shards, then field/value per record). All or nothing: if every record still holds the
# value written to the shard, they leave Redis with their messages, the outbox loses its
# first entries, and the shard number moves on (``shards``; ``archived`` counts the
# records). Nothing changes otherwise. The counters are left alone: they count outcomes,
# wherever the records live. Returns {1} done, {0, i...} the records (1-based) that
# changed since they were read, or {-1} if another writer moved the shard number.
ARCHIVE = """
local batch, outbox = KEYS[1], KEYS[2]
if tonumber(redis.call('HGET', batch, 'shards') or '0') ~= tonumber(ARGV[1]) then
  return {-1}
end
local count = (#KEYS - 2) / 2
local changed = {0}
for i = 1, count do
  if redis.call('HGET', KEYS[2 * i + 1], ARGV[2 * i + 3]) ~= ARGV[2 * i + 4] then
    changed[#changed + 1] = i
  end
end
if #changed > 1 then return changed end
for i = 1, count do
  redis.call('HDEL', KEYS[2 * i + 1], ARGV[2 * i + 3])
  redis.call('HDEL', KEYS[2 * i + 2], ARGV[2 * i + 3])
end
redis.call('LTRIM', outbox, tonumber(ARGV[2]), -1)
if ARGV[3] == '1' then
  redis.call('HINCRBY', batch, 'shards', 1)
  redis.call('HINCRBY', batch, 'archived', count)
  redis.call('HSETNX', batch, 'archive_at', ARGV[4])
end
return {1}
"""

# The producer's check-and-queue, atomic per call (KEYS: counts, batch, the broker's
# queue list, then objects/messages shard per item; ARGV: retention, now, now in base
# 36, force, resend_queued, then field/etag/message per item). An item queued now gets
# its message pushed in the same step when one is given (the broker is this Redis), so
# a queued record always has its message, even when the caller never hears the reply.
# Returns per item: 0 queued now (send it, unless pushed), 1 already finished for this
# ETag, 2 already queued or running for this ETag. Another ETag is a new version of the
# object, a new job: the newest version wins.
QUEUE = (
    LUA_RECORDS
    + """
local retention, now, now36 = ARGV[1], ARGV[2], ARGV[3]
local force, resend = ARGV[4] == '1', ARGV[5] == '1'
local result = {}
for i = 1, (#KEYS - 3) / 2 do
  local objects = KEYS[2 * i + 2]
  local field, etag, message = ARGV[3 * i + 3], ARGV[3 * i + 4], ARGV[3 * i + 5]
  local old = redis.call('HGET', objects, field)
  local verdict, attempts, lost = 0, '0', '0'
  if old then
    local o = split(old)
    local same = etag == '' or o[10] == etag
    if same then
      attempts = o[5]
      -- deaths so far count on when a message is only sent again; a forced retry or
      -- resume gives the object its attempts afresh
      if not force then lost = o[12] or '0' end
    end
    -- a running object is never queued twice for one version (an orphan: `dcmpress
    -- reconcile`); a new version waits for the running delivery's claim
    if o[1] == 'r' and same then verdict = 2
    elseif same and not force and terminal(o[1]) then verdict = 1
    elseif same and not force and not resend then verdict = 2 end
  end
  if verdict == 0 then
    local value = 'q||0|0|' .. attempts .. '|||0||' .. etag .. '|' .. now36 .. '|' .. lost
    move(objects, KEYS[2 * i + 3], field, old, value, '', retention)
    if message ~= '' then redis.call('LPUSH', KEYS[3], message) end
  end
  result[i] = verdict
end
-- when objects were last queued: the messages follow at once, so the automatic
-- reconcile leaves a batch alone for a while after it
redis.call('HSET', KEYS[2], 'queued_at', now)
flush(KEYS[1], KEYS[2], now, retention)
return result
"""
)

# Deletes a claim only if we still own it (it may have lapsed and been re-taken).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Extends a claim we own, takes it back if it lapsed and nobody took it; 0 if another
# owner holds it now.
RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""

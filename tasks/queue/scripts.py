"""Lua scripts of the reliable queue.

Each one exists because its steps must happen atomically, or in one round
trip where a pipeline cannot express a loop. All keys of a script belong to
one queue and share its hash slot (see keys.py), so they run on Redis Cluster.
"""

# Why: a dead letter reads the same whoever wrote it, TAKE_BATCH for an
# oversized item it never hands out, or ACK for what a worker gave up on. The
# one builder of the entry; the two scripts that write entries start with it.
DEAD_ENTRY = """
local function dead_entry(reason, id, task, worker, at, item)
  return cjson.encode({reason = reason, id = id, task = task, worker = worker, at = at, item = item})
end
"""

# Why: a producer's push and the sweeper's index must never disagree, and
# "queue full" must be decided atomically with the push.
ENQUEUE = """
-- KEYS[1] = queue list
-- KEYS[2] = task id set (the sweeper's index)
-- ARGV[1] = maximum queue length, 0 for unbounded
-- ARGV[2..] = id, envelope, id, envelope, ...
local limit = tonumber(ARGV[1])
if limit > 0 and redis.call('LLEN', KEYS[1]) + (#ARGV - 1) / 2 > limit then
  return -1
end
for i = 2, #ARGV, 2 do
  redis.call('SADD', KEYS[2], ARGV[i])
  redis.call('LPUSH', KEYS[1], ARGV[i + 1])
end
return redis.call('LLEN', KEYS[1])
"""

# Why: a deep queue drains in batches, one round trip for many items. Items
# over the size limit go straight to the dead list inside Redis, so a worker
# never holds them in memory; only their sizes and ids come back. An item recovered
# from a dead worker is taken alone: if it is what killed that worker, it
# must not take a batch of innocent tasks down with it again.
TAKE_BATCH = DEAD_ENTRY + """
-- KEYS[1] = queue list
-- KEYS[2] = this worker's processing list
-- KEYS[3] = dead-letter list
-- KEYS[4] = recovered list (items of dead workers)
-- KEYS[5] = task id set (the sweeper's index)
-- ARGV[1] = most items to take
-- ARGV[2] = largest item in bytes
-- ARGV[3] = ISO time, for the dead-letter entry
-- ARGV[4] = worker id, for the dead-letter entry
-- ARGV[5] = bytes of an oversized item the dead-letter entry keeps
-- Returns {items, {{size, id}, ...}}: the id an oversized envelope starts
-- with (envelope.HEAD_ID), or '', so that its own row records the outcome.
local items, oversized = {}, {}
local limit = tonumber(ARGV[2])
local source, count = KEYS[1], tonumber(ARGV[1])
if redis.call('LLEN', KEYS[4]) > 0 then
  source, count = KEYS[4], 1
end
for i = 1, count do
  local item = redis.call('LMOVE', source, KEYS[2], 'RIGHT', 'LEFT')
  if not item then break end
  if #item > limit then
    redis.call('LPOP', KEYS[2])
    local head = string.sub(item, 1, tonumber(ARGV[5]))
    local id = string.match(head, '^%s*{%s*"id"%s*:%s*"([A-Za-z0-9_.:%-]+)"') or ''
    if #id > 64 then id = '' end
    if id ~= '' then redis.call('SREM', KEYS[5], id) end
    local reason = 'oversized: ' .. #item .. ' bytes, over the limit of ' .. limit
    redis.call('LPUSH', KEYS[3], dead_entry(reason, id, '', ARGV[4], ARGV[3], head))
    oversized[#oversized + 1] = {#item, id}
  else
    items[#items + 1] = item
  end
end
return {items, oversized}
"""

# Why: acknowledging a batch is one command, not one per item: building,
# sending and parsing 200 LREMs cost a fifth of a no-op task. Atomic, so the
# items leave the processing list together with their retries, dead letters
# and counters. Items were pushed on the left as they were taken, so the
# oldest sits at the tail and LREM from the tail finds each at once. A retry
# is scheduled only while its item is still in the list: a worker stalled
# past its lease lost the item to the worker that took it back, whose retry
# counts, and a second one would run the task twice.
ACK = DEAD_ENTRY + """
-- KEYS[1] = this worker's processing list
-- KEYS[2] = task id set (the sweeper's index)
-- KEYS[3] = delayed sorted set
-- KEYS[4] = dead-letter list
-- KEYS[5] = stats hash
-- ARGV[1] = dead-letter list's maximum length
-- ARGV[2..6] = how many: done items, finished ids, retries, dead entries, stats
-- then, in that order: items; ids; item + due time + envelope triples;
-- dead letters as reason + id + task + worker + time + item; field +
-- increment pairs.
local i = 7
local function take(count, width)
  local first = i
  i = i + count * width
  return first
end
local counts = {}
for k = 1, 5 do counts[k] = tonumber(ARGV[k + 1]) end
local done, ids = take(counts[1], 1), take(counts[2], 1)
local retries, dead, stats = take(counts[3], 3), take(counts[4], 6), take(counts[5], 2)
for k = 0, counts[5] - 1 do
  redis.call('HINCRBYFLOAT', KEYS[5], ARGV[stats + 2 * k], ARGV[stats + 2 * k + 1])
end
for k = 0, counts[3] - 1 do
  local r = retries + 3 * k
  if redis.call('LPOS', KEYS[1], ARGV[r], 'RANK', -1) then
    redis.call('ZADD', KEYS[3], ARGV[r + 1], ARGV[r + 2])
  end
end
for k = 0, counts[4] - 1 do
  local d = dead + 6 * k
  redis.call('LPUSH', KEYS[4], dead_entry(ARGV[d], ARGV[d + 1], ARGV[d + 2], ARGV[d + 3], ARGV[d + 4], ARGV[d + 5]))
end
if counts[4] > 0 then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[1]) - 1)
end
for k = 0, counts[2] - 1 do
  redis.call('SREM', KEYS[2], ARGV[ids + k])
end
for k = 0, counts[1] - 1 do
  redis.call('LREM', KEYS[1], -1, ARGV[done + k])
end
return counts[1]
"""

# Why: two workers may both notice that a third one died; only one of them
# must move its in-flight items back, and only if the lease is really gone.
# A dead worker's items go to the recovered list (taken one at a time); a
# worker stopping gracefully returns its untouched items to the queue itself.
RECOVER = """
-- KEYS[1] = destination list (the recovered list, or the queue)
-- KEYS[2] = the worker's processing list
-- KEYS[3] = the worker's lease
-- KEYS[4] = the queue's worker set
-- ARGV[1] = worker id
-- ARGV[2] = '1' to recover even with a live lease (a worker's own list)
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  return -1
end
local moved = 0
-- Newest first onto the tail, so the oldest in-flight item is taken first.
while redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
redis.call('SREM', KEYS[4], ARGV[1])
return moved
"""

# Why: a worker about to run a task it took before its lease lapsed (it was
# stalled) must know that no other worker took the task back meanwhile, and
# keep it so: the check and the new lease are one step. A recovery moves the
# whole processing list, so the item still there means nobody took it.
CONFIRM_HELD = """
-- KEYS[1] = this worker's processing list
-- KEYS[2] = the worker's lease
-- KEYS[3] = the queue's worker set
-- ARGV[1] = the item, ARGV[2] = lease in milliseconds, ARGV[3] = worker id
-- Items are taken onto the head, so the next one to run is near the tail.
if not redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1) then
  return 0
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

# Why: moving due items and removing them from the set must be one step, or
# two workers promoting at once would run a task twice.
PROMOTE_DUE = """
-- KEYS[1] = delayed sorted set
-- KEYS[2] = queue list
-- ARGV[1] = now (unix seconds)
-- ARGV[2] = most items to move
-- Returns the due time of the earliest item left, or false.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, item in ipairs(due) do
  redis.call('ZREM', KEYS[1], item)
  redis.call('LPUSH', KEYS[2], item)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return nxt[2]
"""

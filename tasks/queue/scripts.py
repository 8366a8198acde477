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

# --- priority lanes -----------------------------------------------------------
# Why lanes, not one sorted set: each priority keeps a plain list, so FIFO
# within a priority, BLMOVE and the batch take all work as on the single
# list, and priority 0 (the common case, and any raw LPUSH) is the queue key
# itself. Non-zero lanes are ``<lane prefix><priority>`` (keys.lane), in the
# queue's hash slot; the scripts build their names, so they are not in KEYS:
# Redis Cluster allows that within the slot the declared keys hash to. The
# ``lanes`` sorted set names the non-zero lanes that may hold items.
# A worker blocks (BLMOVE) on the queue key alone: a push into another lane
# while that key is empty also leaves a wake token there, which the worker
# drops before taking a batch (reliable.take_blocking), so a priority task on
# an idle queue waits no longer than any other.
LANES = """
local function priority_of(item)
  -- Only envelopes that name a priority are decoded (retries and resends
  -- go through here; the common item is not parsed).
  if not string.find(item, '"priority"', 1, true) then return 0 end
  local ok, data = pcall(cjson.decode, item)
  if not ok or type(data) ~= 'table' then return 0 end
  local p = data['priority']
  if type(p) ~= 'number' or p ~= math.floor(p) or p < -100 or p > 100 then return 0 end
  return p
end
local function lane_key(queue, prefix, priority)
  if priority == 0 then return queue end
  return prefix .. priority
end
-- side: 'LPUSH' to queue behind the others, 'RPUSH' to be taken next.
-- Returns true when the item went into a non-zero lane.
local function push_lane(queue, lanes, prefix, priority, item, side)
  redis.call(side, lane_key(queue, prefix, priority), item)
  if priority ~= 0 then
    redis.call('ZADD', lanes, priority, priority)
    return true
  end
  return false
end
local function wake(queue, token)
  if redis.call('LLEN', queue) == 0 then redis.call('LPUSH', queue, token) end
end
-- The wake token is not counted: it waits at the tail, where it was pushed
-- onto the empty list (a release may put items behind it: then it is
-- counted, an error of one).
local function pending_count(queue, lanes, prefix, token)
  local n = redis.call('LLEN', queue)
  if n > 0 and redis.call('LINDEX', queue, -1) == token then n = n - 1 end
  for _, p in ipairs(redis.call('ZRANGE', lanes, 0, -1)) do
    n = n + redis.call('LLEN', prefix .. p)
  end
  return n
end
"""

# Why: a producer's push and the sweeper's index must never disagree, and
# "queue full" must be decided atomically with the push.
ENQUEUE = LANES + """
-- KEYS[1] = queue list (the priority 0 lane)
-- KEYS[2] = task id set (the sweeper's index)
-- KEYS[3] = lanes sorted set
-- ARGV[1] = maximum queue length (all lanes), 0 for unbounded
-- ARGV[2] = lane prefix, ARGV[3] = wake token
-- ARGV[4..] = id, priority, envelope, id, priority, envelope, ...
-- Returns how many items wait in all lanes.
-- The ids, and the items of priority 0 (nearly all), go in with one variadic
-- call per thousand rather than one call each: a bulk enqueue of 1,000 tasks
-- was 2,000 calls. A thousand at a time keeps unpack() within Lua's stack.
local function call_in_chunks(command, key, values)
  for first = 1, #values, 1000 do
    redis.call(command, key, unpack(values, first, math.min(first + 999, #values)))
  end
end
local limit = tonumber(ARGV[1])
local count = (#ARGV - 3) / 3
local before
if limit > 0 then
  before = pending_count(KEYS[1], KEYS[3], ARGV[2], ARGV[3])
  if before + count > limit then return -1 end
end
local laned = false
if count == 1 then  -- the common enqueue: no tables to build
  redis.call('SADD', KEYS[2], ARGV[4])
  laned = push_lane(KEYS[1], KEYS[3], ARGV[2], tonumber(ARGV[5]), ARGV[6], 'LPUSH')
else
  local ids, plain = {}, {}
  for i = 4, #ARGV, 3 do
    ids[#ids + 1] = ARGV[i]
    local priority = tonumber(ARGV[i + 1])
    if priority == 0 then
      plain[#plain + 1] = ARGV[i + 2]  -- LPUSH a b c queues them in this order
    else
      laned = push_lane(KEYS[1], KEYS[3], ARGV[2], priority, ARGV[i + 2], 'LPUSH') or laned
    end
  end
  call_in_chunks('SADD', KEYS[2], ids)
  call_in_chunks('LPUSH', KEYS[1], plain)
end
if laned then wake(KEYS[1], ARGV[3]) end
if before then return before + count end  -- counted once: the wake token is not counted
return pending_count(KEYS[1], KEYS[3], ARGV[2], ARGV[3])
"""

# Why: a deep queue drains in batches, one round trip for many items. Items
# over the size limit go straight to the dead list inside Redis, so a worker
# never holds them in memory; only their sizes and ids come back. An item recovered
# from a dead worker is taken alone: if it is what killed that worker, it
# must not take a batch of innocent tasks down with it again. Otherwise the
# lanes are taken highest priority first (positive lanes, the queue list,
# negative lanes); a lane found empty leaves the lanes set. A wake token
# taken on the way is dropped (see LANES).
TAKE_BATCH = DEAD_ENTRY + LANES + """
-- KEYS[1] = queue list
-- KEYS[2] = this worker's processing list
-- KEYS[3] = dead-letter list
-- KEYS[4] = recovered list (items of dead workers)
-- KEYS[5] = task id set (the sweeper's index)
-- KEYS[6] = lanes sorted set
-- ARGV[1] = most items to take
-- ARGV[2] = largest item in bytes
-- ARGV[3] = ISO time, for the dead-letter entry
-- ARGV[4] = worker id, for the dead-letter entry
-- ARGV[5] = bytes of an oversized item the dead-letter entry keeps
-- ARGV[6] = lane prefix, ARGV[7] = wake token
-- Returns {items, {{size, id}, ...}, recovered}: the id an oversized envelope
-- starts with (envelope.HEAD_ID), or '', so that its own row records the
-- outcome; recovered is 1 when the item came from the recovered list.
local items, oversized = {}, {}
local limit = tonumber(ARGV[2])
local count = tonumber(ARGV[1])
-- sources[k] = {list, lane member or false}
local sources = {}
local recovered = 0
if redis.call('LLEN', KEYS[4]) > 0 then
  sources, count, recovered = {{KEYS[4], false}}, 1, 1
else
  local lanes = redis.call('ZREVRANGE', KEYS[6], 0, -1)
  for _, p in ipairs(lanes) do
    if tonumber(p) > 0 then sources[#sources + 1] = {ARGV[6] .. p, p} end
  end
  sources[#sources + 1] = {KEYS[1], false}
  for _, p in ipairs(lanes) do
    if tonumber(p) < 0 then sources[#sources + 1] = {ARGV[6] .. p, p} end
  end
end
-- The hot path: locals, not table lookups, for each item.
local s, processing, token = 1, KEYS[2], ARGV[7]
local list, member = sources[1][1], sources[1][2]
local function take_one()
  while list do
    local item = redis.call('LMOVE', list, processing, 'RIGHT', 'LEFT')
    if item == token then
      redis.call('LPOP', processing)
    elseif item then
      return item
    else
      if member then redis.call('ZREM', KEYS[6], member) end
      s = s + 1
      list, member = nil, nil
      if sources[s] then list, member = sources[s][1], sources[s][2] end
    end
  end
  return false
end
for i = 1, count do
  local item = take_one()
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
return {items, oversized, recovered}
"""

# Why: acknowledging a batch is one command, not one per item: building,
# sending and parsing 200 LREMs cost a fifth of a no-op task. Atomic, so the
# items leave the processing list together with their retries, dead letters
# and counters (the index's per-second outcomes and latencies too, so
# charting costs no round trip of its own). Items were pushed on the left as they were taken, so the
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
-- KEYS[6] = this minute's per-second outcome hash (expires)
-- KEYS[7] = recent latencies list (capped)
-- ARGV[1] = dead-letter list's maximum length
-- ARGV[2..8] = how many: done items, finished ids, retries, dead entries,
-- stats, rates, latencies
-- ARGV[9], ARGV[10] = latencies kept, seconds the minute's hash lives
-- then, in that order: items; ids; item + due time + envelope triples;
-- dead letters as reason + id + task + worker + time + item; field +
-- increment pairs (stats, then rates); latencies.
local i = 11
local function take(count, width)
  local first = i
  i = i + count * width
  return first
end
local counts = {}
for k = 1, 7 do counts[k] = tonumber(ARGV[k + 1]) end
local done, ids = take(counts[1], 1), take(counts[2], 1)
local retries, dead, stats = take(counts[3], 3), take(counts[4], 6), take(counts[5], 2)
local rates, latencies = take(counts[6], 2), take(counts[7], 1)
for k = 0, counts[6] - 1 do
  redis.call('HINCRBY', KEYS[6], ARGV[rates + 2 * k], ARGV[rates + 2 * k + 1])
end
if counts[6] > 0 then
  redis.call('EXPIRE', KEYS[6], ARGV[10])
end
if counts[7] > 0 then
  redis.call('LPUSH', KEYS[7], unpack(ARGV, latencies, latencies + counts[7] - 1))
  redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[9]) - 1)
end
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
# worker stopping gracefully returns its untouched items with RELEASE.
RECOVER = """
-- KEYS[1] = destination list (the recovered list)
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
# two workers promoting at once would run a task twice. Each goes to the lane
# of the priority its envelope names (0 for anything else).
PROMOTE_DUE = LANES + """
-- KEYS[1] = delayed sorted set
-- KEYS[2] = queue list
-- KEYS[3] = lanes sorted set
-- ARGV[1] = now (unix seconds)
-- ARGV[2] = most items to move
-- ARGV[3] = lane prefix, ARGV[4] = wake token
-- Returns the due time of the earliest item left, or false.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local laned = false
for _, item in ipairs(due) do
  redis.call('ZREM', KEYS[1], item)
  laned = push_lane(KEYS[2], KEYS[3], ARGV[3], priority_of(item), item, 'LPUSH') or laned
end
if laned then wake(KEYS[2], ARGV[4]) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return nxt[2]
"""

# Why: a worker stopping gracefully returns its untouched items each to the
# tail of its own lane, to be taken next within its priority. They do not go
# to the recovered list: that one is taken an item at a time, for items that
# may have killed a worker, and these never ran. Atomic, like RECOVER, so no
# item is both returned and still held.
RELEASE = LANES + """
-- KEYS[1] = queue list
-- KEYS[2] = the worker's processing list
-- KEYS[3] = the queue's worker set
-- KEYS[4] = lanes sorted set
-- ARGV[1] = worker id, ARGV[2] = lane prefix, ARGV[3] = wake token
local moved, laned = 0, false
-- Newest first onto the tails, so the oldest in-flight item is taken first.
while true do
  local item = redis.call('LPOP', KEYS[2])
  if not item then break end
  if item ~= ARGV[3] then
    laned = push_lane(KEYS[1], KEYS[4], ARGV[2], priority_of(item), item, 'RPUSH') or laned
    moved = moved + 1
  end
end
if laned then wake(KEYS[1], ARGV[3]) end
redis.call('SREM', KEYS[3], ARGV[1])
return moved
"""

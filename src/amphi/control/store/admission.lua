-- Admission in Redis: the same policy as amphi.control.admission (seats, one FIFO across a
-- Space's joins, the pre-start pool, the GCRA admission rate, places held ticket_hold_s),
-- made atomic across nodes by running each decision as one call of this script.
-- tests/control/test_conformance.py runs one table of scenarios against this script and
-- against the Python (MemoryStore): both must give the same answers, positions and counts.
--
-- EVALSHA sha 0 op now limit paused rate burst ttl grace hold max_waiting poll_min poll_max
--                window jitter prefix  ...op arguments
-- Answers are JSON (cjson) so floats keep their precision. Keys (prefix P, "amphi:"):
--   P.epoch            when this keyspace began (set on first use: a restarted Redis starts anew)
--   P.eid, P.seq       entry ids (start at floor(epoch) * 1e5, so tickets never repeat) and arrival order
--   P.gcra             the admission rate's theoretical arrival time
--   P.seats            ZSET seat -> deadline (ZCARD = seats taken, cluster-wide)
--   P.seat:<id>        HASH space, reserved, issued, texp (newest token expiry), edge (1: an edge
--                      issued that token, op "extend": this node does not know it), entry
--   P.sseats:<space>   SET of the Space's seats
--   P.entries          ZSET entry -> deadline of the seat offered to it (a place in line has none)
--   P.entry:<id>       HASH space, seq, n, arrived, last_poll, next_poll, pooled, seat
--   P.line             ZSET entry -> seq: every line's FIFO entries (the head of all lines)
--   P.line:<space>     ZSET entry -> seq: the Space's line (ZRANK + 1 = exact position)
--   P.n:<space>        place numbers given in the Space's line (n, from 0: the line document's numbers)
--   P.gaps:<space>     ZSET n -> n: places that left the line from behind its head (op "line")
--   P.pool:<space>     SET the pre-start pool; P.pools: Spaces with a pool
--   P.served           ZSET seat -> time offered to a ticket (how fast the lines move)
--   P.waiting          places in all lines
--   P.counts:<space>   HASH listeners reserved waiting admitted_total peak_listeners
--   P.limit:<key>      a rate limit's theoretical arrival time (op "limit"), expiring when idle

local op = ARGV[1]
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local paused = ARGV[4] == '1'
local rate = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
local grace = tonumber(ARGV[8])
local hold = tonumber(ARGV[9])
local max_waiting = tonumber(ARGV[10])
local poll_min = tonumber(ARGV[11])
local poll_max = tonumber(ARGV[12])
local window = tonumber(ARGV[13])
local jitter = tonumber(ARGV[14])
local P = ARGV[15]
local A = 16 -- the op's own arguments start here

local EPS = 1e-6
local interval = 1.0 / rate
local tolerance = (burst - 1) * interval

-- numbers: tostring and cjson keep 14 digits, so ids travel as strings (string.format %d)
local epoch = tonumber(redis.call('GET', P .. 'epoch'))
if not epoch then
  epoch = now
  redis.call('SET', P .. 'epoch', string.format('%.6f', now))
  redis.call('SET', P .. 'eid', string.format('%d', math.floor(now) * 100000))
end

local function cnt(space, field, d)
  return redis.call('HINCRBY', P .. 'counts:' .. space, field, d)
end

local function round1(x)
  return math.floor(x * 10 + 0.5) / 10
end

-- The GCRA is amphi.core.gcra.decide written again (Lua cannot import it; the conformance
-- table proves they agree): a request conforms when tat - (burst - 1) / rate <= now (EPS of
-- slack), and a grant moves tat to max(tat, now) + 1 / rate.
local function gcra_wait()
  local tat = tonumber(redis.call('GET', P .. 'gcra') or '0')
  local w = tat - tolerance - now
  if w > EPS then return w end
  return 0
end

local function gcra_take()
  local tat = tonumber(redis.call('GET', P .. 'gcra') or '0')
  if tat - tolerance - now > EPS then return false end
  redis.call('SET', P .. 'gcra', string.format('%.6f', math.max(tat, now) + interval))
  return true
end

local function occupied()
  return redis.call('ZCARD', P .. 'seats')
end

local function waiting_total()
  return tonumber(redis.call('GET', P .. 'waiting') or '0')
end

local function new_seat(space, sid, reserved)
  redis.call('HSET', P .. 'seat:' .. sid, 'space', space, 'reserved', reserved and 1 or 0, 'issued', 0, 'texp', 0)
  redis.call('ZADD', P .. 'seats', now + hold, sid) -- a seat for admit gets its deadline at once
  redis.call('SADD', P .. 'sseats:' .. space, sid)
  if reserved then
    cnt(space, 'reserved', 1)
    redis.call('ZADD', P .. 'served', now, sid)
  end
end

local function count_listener(space)
  local c = P .. 'counts:' .. space
  local l = cnt(space, 'listeners', 1)
  if l > tonumber(redis.call('HGET', c, 'peak_listeners') or '0') then
    redis.call('HSET', c, 'peak_listeners', l)
  end
end

local function admit(space, sid, renewed)
  local k = P .. 'seat:' .. sid
  local s = redis.call('HMGET', k, 'reserved', 'issued')
  if s[1] == '1' then
    redis.call('HSET', k, 'reserved', 0)
    cnt(space, 'reserved', -1)
  end
  if s[2] ~= '1' then
    redis.call('HSET', k, 'issued', 1)
    count_listener(space)
    cnt(space, 'admitted_total', 1)
  end
  local exp = math.ceil(now + ttl)
  redis.call('HSET', k, 'texp', exp)
  redis.call('HDEL', k, 'edge')
  redis.call('ZADD', P .. 'seats', exp + grace, sid)
  return {'admitted', sid, exp, renewed}
end

local function free_seat(sid)
  local k = P .. 'seat:' .. sid
  local s = redis.call('HMGET', k, 'space', 'reserved', 'issued', 'entry')
  redis.call('ZREM', P .. 'seats', sid)
  if not s[1] then return end
  redis.call('DEL', k)
  redis.call('SREM', P .. 'sseats:' .. s[1], sid)
  if s[2] == '1' then cnt(s[1], 'reserved', -1) end
  if s[3] == '1' then cnt(s[1], 'listeners', -1) end
  if s[4] then
    local ek = P .. 'entry:' .. s[4]
    if redis.call('HGET', ek, 'seat') == sid then
      redis.call('DEL', ek)
      redis.call('ZREM', P .. 'entries', s[4])
    end
  end
end

local function line_len(space)
  return redis.call('ZCARD', P .. 'line:' .. space) + redis.call('SCARD', P .. 'pool:' .. space)
end

local function enqueue(space, before)
  local eid = string.format('%d', redis.call('INCR', P .. 'eid')) -- tostring would round it
  local seq = redis.call('INCR', P .. 'seq')
  local k = P .. 'entry:' .. eid
  redis.call('HSET', k, 'space', space, 'seq', seq, 'arrived', string.format('%.6f', now))
  if before then
    redis.call('HSET', k, 'pooled', 1)
    redis.call('SADD', P .. 'pool:' .. space, eid)
    redis.call('SADD', P .. 'pools', space)
  else
    redis.call('HSET', k, 'n', redis.call('INCR', P .. 'n:' .. space) - 1)
    redis.call('ZADD', P .. 'line:' .. space, seq, eid)
    redis.call('ZADD', P .. 'line', seq, eid)
  end
  redis.call('INCR', P .. 'waiting')
  cnt(space, 'waiting', 1)
  return eid
end

local function drop_from_line(eid, space)
  local k = P .. 'entry:' .. eid
  if redis.call('HGET', k, 'pooled') == '1' then
    redis.call('SREM', P .. 'pool:' .. space, eid)
    if redis.call('SCARD', P .. 'pool:' .. space) == 0 then redis.call('SREM', P .. 'pools', space) end
    redis.call('HDEL', k, 'pooled')
  else
    local lk, gk = P .. 'line:' .. space, P .. 'gaps:' .. space
    local rank = redis.call('ZRANK', lk, eid)
    redis.call('ZREM', lk, eid)
    redis.call('ZREM', P .. 'line', eid)
    if rank and rank > 0 then -- left from behind the head: a gap until the head passes it
      local n = redis.call('HGET', k, 'n')
      redis.call('ZADD', gk, n, n)
    else
      local head = redis.call('ZRANGE', lk, 0, 0)[1]
      if head then
        redis.call('ZREMRANGEBYSCORE', gk, '-inf', '(' .. redis.call('HGET', P .. 'entry:' .. head, 'n'))
      else
        redis.call('DEL', gk)
      end
    end
  end
  redis.call('DECR', P .. 'waiting')
  cnt(space, 'waiting', -1)
end

local function drop_entry(eid)
  local k = P .. 'entry:' .. eid
  local e = redis.call('HMGET', k, 'space', 'seat')
  redis.call('ZREM', P .. 'entries', eid)
  if not e[1] then return end
  if not e[2] then
    drop_from_line(eid, e[1])
  end
  redis.call('DEL', k)
  if e[2] and redis.call('HGET', P .. 'seat:' .. e[2], 'reserved') == '1' then
    free_seat(e[2])
  end
end

local function estimate(position)
  local free = math.max(0, limit - occupied())
  if position <= free then return round1(gcra_wait() + position / rate) end
  redis.call('ZREMRANGEBYSCORE', P .. 'served', '-inf', now - window)
  local moving = redis.call('ZCARD', P .. 'served') / window
  if moving > 0 then return round1(position / moving) end
  return nil
end

local function waiting_answer(eid, space, requeued)
  local k = P .. 'entry:' .. eid
  local position, order
  if redis.call('HGET', k, 'pooled') == '1' then
    position, order = redis.call('SCARD', P .. 'pool:' .. space), 'draw_at_start'
  else
    position, order = redis.call('ZRANK', P .. 'line:' .. space, eid) + 1, 'fifo'
  end
  local est = estimate(position)
  local base = position * 0.2 -- the front of the line polls faster (FRONT_POLL_S_PER_PLACE)
  if est then base = math.min(base, est / 3) end
  local retry = math.min(poll_max, math.max(poll_min, base)) * jitter
  -- the place is held until its turn: no deadline while in line
  redis.call('HSET', k, 'last_poll', string.format('%.6f', now), 'next_poll', string.format('%.6f', now + retry))
  local e = redis.call('HMGET', k, 'arrived', 'n')
  return {'waiting', eid, position, line_len(space), est or cjson.null, retry, order, requeued,
          math.floor(tonumber(e[1])), e[2] and tonumber(e[2]) or cjson.null}
end

local function join(space, sid, before, requeued)
  if waiting_total() == 0 and not paused and occupied() < limit and gcra_take() then
    new_seat(space, sid, false)
    return admit(space, sid, false)
  end
  if waiting_total() >= max_waiting then return {'too_busy'} end
  return waiting_answer(enqueue(space, before), space, requeued)
end

-- A verified token's seat, HMGET space reserved texp edge. A seat this keyspace never saw, for
-- a token issued before the keyspace began (Redis restarted and lost it), is taken back:
-- admitted listeners are never evicted.
local function token_seat(space, sid, texp)
  local k = P .. 'seat:' .. sid
  local s = redis.call('HMGET', k, 'space', 'reserved', 'texp', 'edge')
  if not s[1] and texp - ttl <= epoch + 1 and texp + grace > now then
    redis.call('HSET', k, 'space', space, 'reserved', 0, 'issued', 1, 'texp', texp)
    redis.call('ZADD', P .. 'seats', texp + grace, sid)
    redis.call('SADD', P .. 'sseats:' .. space, sid)
    count_listener(space)
    s = {space, '0', tostring(texp), false}
  end
  return s
end

local function next_in_line()
  local best, best_seq = nil, nil
  local head = redis.call('ZRANGE', P .. 'line', 0, 0, 'WITHSCORES')
  if head[1] then best, best_seq = head[1], tonumber(head[2]) end
  for _, space in ipairs(redis.call('SMEMBERS', P .. 'pools')) do
    local cand = redis.call('SRANDMEMBER', P .. 'pool:' .. space)
    if cand then
      local seq = tonumber(redis.call('HGET', P .. 'entry:' .. cand, 'seq'))
      if best == nil or seq < best_seq then best, best_seq = cand, seq end
    end
  end
  return best
end

local result
if op == 'beat' then
  -- the heartbeat: which keyspace this is, seats taken, places in line
  result = {redis.call('GET', P .. 'epoch'), occupied(), waiting_total()}
elseif op == 'join' then
  -- space seat before_start
  result = join(ARGV[A], ARGV[A + 1], ARGV[A + 2] == '1', false)
elseif op == 'poll' then
  -- space entry new_seat before_start
  local space, eid = ARGV[A], ARGV[A + 1]
  local k = P .. 'entry:' .. eid
  local e = redis.call('HMGET', k, 'space', 'seat', 'last_poll', 'next_poll')
  if not e[1] or e[1] ~= space then
    result = join(space, ARGV[A + 2], ARGV[A + 3] == '1', true) -- its place lapsed: the back of the line
  elseif e[2] then
    result = admit(space, e[2], false) -- a seat was offered to it: pick it up
  else
    local last, nxt = tonumber(e[3]), tonumber(e[4])
    if now < nxt - 0.5 * (nxt - last) then
      result = {'too_early', math.max(0.1, nxt - now)}
    else
      result = waiting_answer(eid, space, false)
    end
  end
elseif op == 'renew' or op == 'held' then
  -- space seat token_expires: a verified token's seat (taken back if the keyspace lost it)
  local space, sid = ARGV[A], ARGV[A + 1]
  local s = token_seat(space, sid, tonumber(ARGV[A + 2]))
  if not s[1] or s[1] ~= space or s[2] == '1' then
    result = {'released'}
  elseif op == 'held' then
    result = {'held'}
  elseif s[4] ~= '1' and tonumber(s[3]) - now > 0.75 * ttl then -- RENEWED_RECENTLY: the same token again
    result = {'admitted', sid, tonumber(s[3]), true}
  else
    result = admit(space, sid, true)
  end
elseif op == 'extend' then
  -- space (seat old_texp new_texp)...: seats an edge renewed, one call per batch. Each seat of
  -- the Space still held (taken back as in renew) lasts until the new expiry, at most one token
  -- life from now (+1 s), plus the grace: never shortened, never created. Answers {'gone',
  -- seat...}: the seats not held (the marker keeps the list an array: cjson encodes {} as an object)
  local space = ARGV[A]
  local latest = math.ceil(now + ttl) + 1
  result = {'gone'}
  for i = A + 1, #ARGV, 3 do
    local sid, texp = ARGV[i], math.min(tonumber(ARGV[i + 2]), latest)
    local s = token_seat(space, sid, tonumber(ARGV[i + 1]))
    if not s[1] or s[1] ~= space or s[2] == '1' then
      result[#result + 1] = sid
    elseif texp > tonumber(s[3]) then
      redis.call('HSET', P .. 'seat:' .. sid, 'texp', texp, 'edge', 1)
      redis.call('ZADD', P .. 'seats', texp + grace, sid)
    end
  end
elseif op == 'leave_seat' then
  local space, sid = ARGV[A], ARGV[A + 1]
  local s = redis.call('HMGET', P .. 'seat:' .. sid, 'space', 'reserved')
  if s[1] == space and s[2] == '0' then
    free_seat(sid)
    result = {true}
  else
    result = {false}
  end
elseif op == 'leave_place' then
  -- the place, or the seat offered to it even once picked up (the ticket names that seat)
  local space, eid = ARGV[A], ARGV[A + 1]
  local e = redis.call('HMGET', P .. 'entry:' .. eid, 'space', 'seat')
  if e[1] == space then
    drop_entry(eid)
    if e[2] then free_seat(e[2]) end
    result = {true}
  else
    result = {false}
  end
elseif op == 'promote' then
  -- offers free seats to the heads of the lines as the rate allows; after 1000 offers
  -- (MAX_OFFERS_PER_PASS) it answers 0: call again
  result = {cjson.null}
  local offered = 0
  while waiting_total() > 0 and occupied() < limit do  -- paused or not: the limit is the brake
    if offered >= 1000 then
      result = {0}
      break
    end
    local wait = gcra_wait()
    if wait > 0 then
      result = {wait}
      break
    end
    local eid = next_in_line()
    if not eid then break end
    local ek = P .. 'entry:' .. eid
    local space = redis.call('HGET', ek, 'space')
    gcra_take()
    drop_from_line(eid, space)
    local sid = 'w' .. eid
    new_seat(space, sid, true)
    redis.call('HSET', P .. 'seat:' .. sid, 'entry', eid)
    redis.call('HSET', ek, 'seat', sid)
    redis.call('ZADD', P .. 'entries', now + hold, eid)
    offered = offered + 1
  end
elseif op == 'sweep' then
  local freed = 0
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'seats', '-inf', now, 'LIMIT', 0, 1000)) do
    free_seat(sid)
    freed = freed + 1
  end
  for _, eid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'entries', '-inf', now, 'LIMIT', 0, 1000)) do
    drop_entry(eid)
    freed = freed + 1
  end
  result = {freed}
elseif op == 'draw' then
  -- space eid...: the pre-start pool, shuffled by the caller, joins the line in that order;
  -- the drawn entries take the pool's arrival numbers (seq) in that order, so the pool keeps
  -- its place among the other Spaces' lines and stays ahead of anyone who arrives later
  local space = ARGV[A]
  local eids, seqs = {}, {}
  for i = A + 1, #ARGV do
    local eid = ARGV[i]
    if redis.call('SREM', P .. 'pool:' .. space, eid) == 1 then
      eids[#eids + 1] = eid
      seqs[#seqs + 1] = tonumber(redis.call('HGET', P .. 'entry:' .. eid, 'seq'))
    end
  end
  table.sort(seqs)
  for i, eid in ipairs(eids) do
    redis.call('HSET', P .. 'entry:' .. eid, 'seq', seqs[i], 'n', redis.call('INCR', P .. 'n:' .. space) - 1)
    redis.call('HDEL', P .. 'entry:' .. eid, 'pooled')
    redis.call('ZADD', P .. 'line:' .. space, seqs[i], eid)
    redis.call('ZADD', P .. 'line', seqs[i], eid)
  end
  local drawn = #eids
  if redis.call('SCARD', P .. 'pool:' .. space) == 0 then redis.call('SREM', P .. 'pools', space) end
  result = {drawn}
elseif op == 'close' then
  -- the Space ended: its seats and its line are gone
  local space = ARGV[A]
  for _, sid in ipairs(redis.call('SMEMBERS', P .. 'sseats:' .. space)) do free_seat(sid) end
  local gone = 0
  for _, eid in ipairs(redis.call('ZRANGE', P .. 'line:' .. space, 0, -1)) do
    redis.call('ZREM', P .. 'line', eid)
    redis.call('ZREM', P .. 'entries', eid)
    redis.call('DEL', P .. 'entry:' .. eid)
    gone = gone + 1
  end
  for _, eid in ipairs(redis.call('SMEMBERS', P .. 'pool:' .. space)) do
    redis.call('ZREM', P .. 'entries', eid)
    redis.call('DEL', P .. 'entry:' .. eid)
    gone = gone + 1
  end
  redis.call('DEL', P .. 'line:' .. space, P .. 'pool:' .. space, P .. 'sseats:' .. space, P .. 'gaps:' .. space, P .. 'n:' .. space)
  redis.call('SREM', P .. 'pools', space)
  redis.call('DECRBY', P .. 'waiting', gone)
  redis.call('HSET', P .. 'counts:' .. space, 'waiting', 0)
  result = {gone}
elseif op == 'line' then
  -- space: the line document's numbers (amphi.control.admission.Line): the lowest place number
  -- in line (the next when none), the next, the gaps from the head on (1000 at most: MAX_GAPS),
  -- places in line and pool, seats free, the rate's wait, how fast the lines moved lately
  local space = ARGV[A]
  local nxt = tonumber(redis.call('GET', P .. 'n:' .. space) or '0')
  local head = redis.call('ZRANGE', P .. 'line:' .. space, 0, 0)[1]
  local called = head and tonumber(redis.call('HGET', P .. 'entry:' .. head, 'n')) or nxt
  local gaps = redis.call('ZRANGEBYSCORE', P .. 'gaps:' .. space, called, '+inf', 'LIMIT', 0, 1000)
  for i = 1, #gaps do gaps[i] = tonumber(gaps[i]) end
  gaps[#gaps + 1] = -1 -- a marker keeps the list an array (cjson encodes {} as an object)
  redis.call('ZREMRANGEBYSCORE', P .. 'served', '-inf', now - window)
  result = {called, nxt, gaps, line_len(space), redis.call('SCARD', P .. 'pool:' .. space),
            math.max(0, limit - occupied()), gcra_wait(), redis.call('ZCARD', P .. 'served') / window}
elseif op == 'limit' then
  -- key rate burst: one grant from a GCRA budget (request-to-speak per client address):
  -- amphi.core.gcra.GcraTable.charge; the key expires once its budget is whole again
  local k = P .. 'limit:' .. ARGV[A]
  local iv = 1.0 / tonumber(ARGV[A + 1])
  local tol = (tonumber(ARGV[A + 2]) - 1) * iv
  local tat = tonumber(redis.call('GET', k) or '0')
  local wait = tat - tol - now
  if wait > EPS then
    result = {wait}
  else
    local new = math.max(tat, now) + iv
    redis.call('SET', k, string.format('%.6f', new), 'PX', math.ceil((new - now) * 1000) + 1000)
    result = {0}
  end
else
  return redis.error_reply('unknown admission op ' .. tostring(op))
end
return cjson.encode(result)

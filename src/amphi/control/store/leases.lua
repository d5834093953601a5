-- Which node hosts each live Space and which stands by (docs/cluster.md, amphi.control.leases).
-- One call for all of a node's Spaces. KEYS are unused (one Redis, not a cluster).
--   P.lease:<space>    the host's node id, PX ttl: renewed by the host, lapses when it dies
--   P.standby:<space>  the standby's node id, PX: the one node that may take a lapsed lease
--   P.gen:<space>      counts the lease's holders (each take-over adds one)
--   P.handoff:<space>  a drain's last segment on the old host: the new host resumes after it
--   P.epoch            when this keyspace began (admission.lua): a Redis that restarted empty
--                      lets the hosts take their leases back before any standby may
-- ARGV: op, prefix, node, ttl_ms, now, ...
local op, P, node, ttl, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])

if op == 'renew' then
  -- ARGV[6..]: the Spaces this node hosts. For each: '' if held (renewed, or taken back while
  -- free: a restarted Redis, a host that was slow but not replaced), else the node that holds it.
  local out = {}
  for i = 6, #ARGV do
    local key = P .. 'lease:' .. ARGV[i]
    local holder = redis.call('GET', key)
    if holder == node then
      redis.call('PEXPIRE', key, ttl)
      out[#out + 1] = ''
    elseif not holder then
      redis.call('SET', key, node, 'PX', ttl)
      redis.call('INCR', P .. 'gen:' .. ARGV[i])
      out[#out + 1] = ''
    else
      out[#out + 1] = holder
    end
  end
  return out
elseif op == 'stand_by' then
  -- ARGV[6]: the standby key's ttl (ms); ARGV[7..]: Spaces other nodes host. This node offers to
  -- stand by each; for each, {standby, holder}: the standby (this node if the offer was taken)
  -- and the lease's holder ('' while it has lapsed).
  local standby_ttl = tonumber(ARGV[6])
  local out = {}
  for i = 7, #ARGV do
    local s = ARGV[i]
    local key = P .. 'standby:' .. s
    local holder = redis.call('GET', P .. 'lease:' .. s) or ''
    local standby = redis.call('GET', key)
    if holder ~= node and (not standby or standby == node) then
      redis.call('SET', key, node, 'PX', standby_ttl)
      standby = node
    end
    out[#out + 1] = {standby or '', holder}
  end
  return out
elseif op == 'acquire' then
  -- ARGV[6]: the Space, ARGV[7]: the reclaim window (s). Only its standby, only while the lease
  -- has lapsed, and not in the first seconds of a new keyspace. {1, generation} or {0, why}.
  local s, reclaim = ARGV[6], tonumber(ARGV[7])
  local holder = redis.call('GET', P .. 'lease:' .. s)
  if holder then return {0, 'held by ' .. holder} end
  if redis.call('GET', P .. 'standby:' .. s) ~= node then return {0, 'not the standby'} end
  local epoch = tonumber(redis.call('GET', P .. 'epoch'))
  if not epoch or now - epoch < reclaim then return {0, 'reclaim window'} end
  redis.call('SET', P .. 'lease:' .. s, node, 'PX', ttl)
  return {1, redis.call('INCR', P .. 'gen:' .. s)}
elseif op == 'hand_over' then
  -- ARGV[6]: the Space, ARGV[7]: the node to hand it to (a drain), ARGV[8]: the last segment this
  -- node made (the new host resumes after it). Only by the holder.
  local s, to, last = ARGV[6], ARGV[7], ARGV[8]
  if redis.call('GET', P .. 'lease:' .. s) ~= node then return 0 end
  redis.call('SET', P .. 'lease:' .. s, to, 'PX', ttl)
  redis.call('SET', P .. 'handoff:' .. s, last, 'PX', 30000)
  redis.call('DEL', P .. 'standby:' .. s)
  return redis.call('INCR', P .. 'gen:' .. s)
elseif op == 'release' then
  -- ARGV[6..]: Spaces that ended here: their lease and standby go
  for i = 6, #ARGV do
    if redis.call('GET', P .. 'lease:' .. ARGV[i]) == node then
      redis.call('DEL', P .. 'lease:' .. ARGV[i], P .. 'standby:' .. ARGV[i])
    end
  end
  return 1
elseif op == 'holders' then
  -- ARGV[6..]: Spaces; for each {holder, standby, the last segment of a hand-over} ('' if none)
  local out = {}
  for i = 6, #ARGV do
    local s = ARGV[i]
    out[#out + 1] = {redis.call('GET', P .. 'lease:' .. s) or '', redis.call('GET', P .. 'standby:' .. s) or '',
                     redis.call('GET', P .. 'handoff:' .. s) or ''}
  end
  return out
end
return redis.error_reply('unknown op ' .. tostring(op))

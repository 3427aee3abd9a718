#!lua name=segment_worker
--[[
segment-worker: the atomic, fenced writes of one input partition (Redis Functions, Redis >= 7).

Key layout (worker/keys.py is the spec; tests/test_keys.py checks that this copy agrees).
<base> is "<prefix>:{p<N>}:" for input partition N; "{p<N>}" is the FIRST {...} of every key,
hence its Redis Cluster hash tag, so all keys of one call live in one slot. <name> is the
customer id, or with a pseudonym key its HMAC in hex; <digest> is 64 lowercase hex digits,
never an id: the pseudonym with a pseudonym key, else the id's SHA-256.
  <base>meta       hash    the partition's bookkeeping, the fields below
  <base>at         zset    the due instants (epoch ms) that have a bucket: member = score
  <base>at:<instant> hash  bucket: field <name> (value "") for each customer due then
  <base>due        zset    library version < 9's due index: member <name>, score instant
  <base>outbox     list    output records waiting for the relay, oldest first
  <base>c:<name>   string  the customer's state (opaque bytes of the core's codec)
  <base>x:<digest> string  erasure marker (value "1", with a TTL)

Fields of the meta hash:
  epoch                        the owner's fencing epoch, bumped by every claim
  off:<topic>                  next offset to read of input topic <topic> (never backwards)
  pop:<dimension>\x1f<class>   customers per class (kept by commit's deltas)
  rules                        rules mark: version all customers were last re-evaluated under
  rules_pass                   rules version of a re-evaluation begun and not finished
  relayed                      relay mark: change topic's offset after the last change relayed
  writes                       commits and erasures so far (a recount's check that none ran)

Every function:
- touches only keys passed in KEYS, and checks that they follow the layout and share <base>;
- checks ALL its arguments, the types of the keys it writes and the epoch before its first
  write (Redis has no rollback) and answers bad input with "ERR segment_worker_<fn>: ...",
  having written nothing;
- answers a write with an epoch other than the stored one with
  "FENCED current=<stored> given=<caller's>", having written nothing;
- answers a write whose claim was made on another server process (ARGV server: the run id
  the claim returned) with "RESET current=<this server's run id> given=<caller's>", having
  written nothing. A Redis that restarted, was restored from a copy or failed over may have
  lost writes, and even the epoch the caller holds: its epoch may have been handed out again
  here. Only a claim on this server says where input must be read again from.
Integers in ARGV are canonical decimal strings (no sign unless noted, no leading zeros, no
exponent) of at most 2^53 - 1: Lua numbers are doubles. Values are passed on to Redis as the
strings they came in as, never re-formatted (tostring(1.7e12) is "1.7e+12").
Batches of any size: multi-argument commands are issued in chunks of CHUNK values, because
Lua's unpack() is bounded by the C stack (about 8,000 values).

segment_worker_claim
  KEYS  meta
  ARGV  (none)
  Bumps the epoch (fencing the previous owner) and returns
  {epoch, run id of this server, topic_1, offset_1, topic_2, offset_2, ...} (the stored
  off:<topic> fields). The fenced writes below take the epoch and that run id.

segment_worker_commit
  KEYS  meta, at, outbox, c:<name> x n_set (states to set), c:<name> x n_del (to delete)
  ARGV  epoch, server, n_set, n_del, n_out, n_off, n_pop,
        blob x n_set                       (value of the i-th state key to set)
        (indexed, due) x (n_set + n_del)   (the due index, for the customer of the i-th
                                           c: key: the instant it is indexed under or "",
                                           and its new one or "")
        record x n_out                     (RPUSH to the outbox, in order)
        (topic, offset) x n_off            (off:<topic> = max(stored, offset))
        (field, delta) x n_pop             (HINCRBY pop:<field> by delta; delta may be < 0)
  The due index keeps a bucket (hash) per due instant rather than a zset entry per customer:
  a name in a bucket costs ~30 bytes, a zset entry ~112. A customer is added to the
  bucket of `due` and, when `indexed` differs, removed from that of `indexed` (both "":
  the index is left as it is for that customer); an emptied
  bucket leaves `at`. An `indexed` that is wrong (a state read under another shop calendar)
  leaves a stale name behind, which segment_worker_due hands to the sweep when its instant
  comes; the sweep's commit then removes it (it passes the instant it found it under).
  Counts itself in `writes`. Returns the outbox length after the append.

segment_worker_ack_commit
  KEYS  as segment_worker_commit
  ARGV  count, relayed (as segment_worker_ack), then segment_worker_commit's ARGV
  segment_worker_ack of the previous batch's relayed records and segment_worker_commit of
  this batch in one atomic step (one round trip), fenced by the commit's epoch: the trim
  takes the first `count` records, which precede every record this commit appends.
  Returns the outbox length after the trim and the append.

segment_worker_ack
  KEYS  meta, outbox
  ARGV  epoch, server, count,
        relayed ("" or the change topic's offset after the last change relayed)
  Trims the first `count` records (the relay has had them acknowledged by the broker) and
  keeps relayed = max(stored, given) in the meta hash: after Redis loses writes, the change
  topic's records from there on are the changes this Redis no longer knows it emitted.
  Returns the outbox length after the trim.

segment_worker_erase
  KEYS  meta, at, c:<name>, x:<digest>
  ARGV  epoch, server, name, marker_ttl_ms ("" = no marker), indexed ("" or the instant the
        customer is indexed under)
  Deletes the state and the due entry; with a TTL, sets the marker x:<digest> = "1" for that
  long. Counts itself in `writes`. Returns 1 if a state was deleted, else 0.

segment_worker_forget
  KEYS  meta, c:<name>
  ARGV  stored value, name
  An operator's compare-and-delete of a damaged state: deletes the state if it still is
  `stored value`. Not fenced (the partition's owner is stopped on that state) and no
  population change (its classes cannot be read). Its due entry, at an instant nobody can
  read any more, is dropped by segment_worker_due when that instant comes. Returns 1 if
  deleted, else 0.

segment_worker_due
  KEYS  at, due (the index of library versions before 9)
  ARGV  now (epoch ms), limit (>= 1)
  Returns {instant_1, name_1, instant_2, name_2, ...}: at most `limit` customers whose
  bucket's instant is <= now, earliest instant first. First moves up to `limit` entries of
  the old index (earliest first, so what is due moves first) into the buckets, and on the
  way drops names that have no state (forgotten or erased while on the old index). Not
  fenced: it moves entries without changing what they say, and drops only what no commit
  can have written, as every commit writes a state with its due entry.

segment_worker_begin_rules
  KEYS  meta
  ARGV  epoch, server, rules version (not empty)
  Sets rules_pass: a re-evaluation under this version begins, and until it ends customers
  may be classified under it, under the rules mark, or under the rules of an earlier pass
  that did not end. Returns 1.

segment_worker_mark_rules
  KEYS  meta
  ARGV  epoch, server, rules version (not empty)
  Sets the rules mark: every customer of the partition is classified under this version;
  deletes rules_pass (that re-evaluation ended). Returns 1.

segment_worker_recount
  KEYS  meta
  ARGV  server, writes, (field, count) x n   (the partition's true population per field)
  An operator's rewrite of the population counts (`segment-worker redis recount`): replaces
  every pop:<field> with the counts given (a field not given is deleted). Not fenced by the
  epoch (the recount owns no partition): instead refused, writing nothing, with
  "CHANGED current=<stored writes> given=<writes>" if any commit or erasure ran since the
  caller read `writes` (the counts may miss it), and with "RESET ..." as above if the server
  is not the one (run id `server`) the caller read the states from. Returns 1.

segment_worker_read (read-only)
  KEYS  meta, c:<name> x n, x:<digest> x n (the same customers in the same order)
  ARGV  (none)
  Returns {run id of this server, state 1 or nil, ..., state n or nil, erased 1, ...,
  erased n}, erased i = 1 when customer i has no state but an erasure marker, else 0: a
  caller about to write learns in the same round trip whether the server holding the
  partition restarted (and may have lost writes) since it claimed it, and whom it must not
  bring back. In a cluster it runs on the slot's master.

segment_worker_version (read-only)
  Returns LIBRARY_VERSION.
]]

local LIBRARY_VERSION = '11'
local CHUNK = 512 -- values per multi-argument command; even, so that pairs never split
local MAX_INT = 9007199254740991 -- 2^53 - 1
local HEADER = 7 -- commit: epoch, server and the five counts

-- Validation. `fail` raises a plain message (level 0: no source position); each function runs
-- its checks under pcall and turns a failure into an error reply before anything is written.

local function fail(message)
  error(message, 0)
end

local function show(value)
  if value == nil then
    return 'nothing'
  end
  if #value > 40 then
    return string.format('%q', string.sub(value, 1, 40)) .. '...'
  end
  return string.format('%q', value)
end

-- The number a canonical decimal string stands for, or nil and what it should have been.
local function parse_uint(value)
  if value == nil or #value > 16 or not (value == '0' or string.find(value, '^[1-9]%d*$')) then
    return nil, 'a non-negative integer'
  end
  local n = tonumber(value)
  if n > MAX_INT then
    return nil, 'at most 2^53 - 1'
  end
  return n
end

-- `whose` (optional) names the item the value belongs to; formatted only on failure, as this
-- runs once per entry of a batch.
local function uint(value, what, whose)
  local n, need = parse_uint(value)
  if n == nil then
    if whose ~= nil then
      what = what .. ' of ' .. show(whose)
    end
    fail(what .. ' must be ' .. need .. ', got ' .. show(value))
  end
  return n
end

local function int(value, what, whose)
  if value ~= nil and string.sub(value, 1, 1) == '-' and value ~= '-0' then
    return -uint(string.sub(value, 2), what, whose)
  end
  return uint(value, what, whose)
end

local function topic_name(value, what)
  if value == nil or #value == 0 or #value > 249 or not string.find(value, '^[%w%._%-]+$') then
    fail(what .. ' must be a Kafka topic name ([A-Za-z0-9._-], 1 to 249 characters), got '
      .. show(value))
  end
  return value
end

local function key_count(keys, want)
  if #keys ~= want then
    fail('expected ' .. want .. ' keys, got ' .. #keys)
  end
end

local function arg_count(args, want)
  if #args ~= want then
    fail('expected ' .. want .. ' arguments (from the counts given), got ' .. #args)
  end
end

-- KEYS[1] must be <prefix>:{p<N>}:meta with no brace in <prefix>; returns <base>.
local function base_of(meta)
  local base = meta and string.match(meta, '^([^{}]*{p%d+}:)meta$')
  if base == nil then
    fail('KEYS[1] must be <prefix>:{p<N>}:meta (no braces in the prefix), got ' .. show(meta))
  end
  return base
end

local function same_key(key, want, what)
  if key ~= want then
    fail(what .. ' must be ' .. show(want) .. ', got ' .. show(key))
  end
end

-- An erasure marker's key: <base>x:<digest>, 64 lowercase hex digits (never an id).
local function marker_key(key, base, what)
  local head = base .. 'x:'
  local digest = key ~= nil and string.sub(key, 1, #head) == head and string.sub(key, #head + 1)
  if not (digest and #digest == 64 and string.find(digest, '^[0-9a-f]+$')) then
    fail(what .. ' must be ' .. show(base .. 'x:<64 hex digits>') .. ', got ' .. show(key))
  end
end

local function key_type(key, want, what)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want then
    fail(what .. ' ' .. show(key) .. ' holds a ' .. found .. ', not a ' .. want)
  end
end

-- The epoch of a write: a claim's, so at least 1.
local function claimed_epoch(value)
  local epoch = uint(value, 'epoch')
  if epoch < 1 then
    fail('epoch must be >= 1 (claim the partition first), got ' .. show(value))
  end
  return epoch
end

-- The run id of the claim the caller holds (40 hex digits, as INFO reports it).
local function server_arg(value)
  if value == nil or #value ~= 40 or not string.find(value, '^%x+$') then
    fail('server must be the run id the claim returned (40 hex digits), got ' .. show(value))
  end
  return value
end

-- This server process's run id: a new one after every restart.
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end

-- The meta hash's epoch (0 if never claimed), after checking the key's type and the value.
local function stored_epoch(meta)
  key_type(meta, 'hash', 'meta key')
  local value = redis.call('HGET', meta, 'epoch')
  if value == false then
    return 0
  end
  return uint(value, 'stored epoch')
end

local function checked(name, check, keys, args)
  local ok, result = pcall(check, keys, args)
  if ok then
    return result, nil
  end
  if type(result) == 'table' then -- an error reply of redis.call
    result = result.err or 'error'
  end
  return nil, redis.error_reply('ERR ' .. name .. ': ' .. tostring(result))
end

local function fenced(current, given)
  return redis.error_reply('FENCED current=' .. current .. ' given=' .. given)
end

-- `checked` for the fenced writes: also refuses a caller whose claim was made on another
-- server process, and one whose epoch is not the stored one.
local function admitted(name, check, keys, args)
  local plan, err = checked(name, check, keys, args)
  if err then
    return nil, err
  end
  local here = run_id()
  if plan.server ~= here then
    return nil, redis.error_reply('RESET current=' .. here .. ' given=' .. plan.server)
  end
  if plan.current ~= plan.epoch then
    return nil, fenced(plan.current, plan.epoch)
  end
  return plan, nil
end

-- Writes in chunks of at most CHUNK values.

local function call_values(command, key, values, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    redis.call(command, key, unpack(values, i, j))
    i = j + 1
  end
end

local function del_keys(keys, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    redis.call('DEL', unpack(keys, i, j))
    i = j + 1
  end
end

local function mset(keys, key_first, values, value_first, n)
  local done = 0
  while done < n do
    local m = math.min(CHUNK / 2, n - done)
    local flat = {}
    for i = 0, m - 1 do
      flat[2 * i + 1] = keys[key_first + done + i]
      flat[2 * i + 2] = values[value_first + done + i]
    end
    redis.call('MSET', unpack(flat))
    done = done + m
  end
end

-- claim

local function check_claim(keys, args)
  key_count(keys, 1)
  base_of(keys[1])
  arg_count(args, 0)
  return stored_epoch(keys[1])
end

local function claim(keys, args)
  local _, err = checked('segment_worker_claim', check_claim, keys, args)
  if err then
    return err
  end
  local out = { redis.call('HINCRBY', keys[1], 'epoch', 1), run_id() }
  local fields = redis.call('HGETALL', keys[1])
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 4) == 'off:' then
      out[#out + 1] = string.sub(fields[i], 5)
      out[#out + 1] = fields[i + 1]
    end
  end
  return out
end

-- the due index

local function instant_arg(value, what, whose)
  if value ~= '' then
    uint(value, what, whose)
  end
  return value
end

local function bucket_key(base, instant)
  return base .. 'at:' .. instant
end

-- Adds `name` to the fields to set in the bucket of `instant` (value '').
local function add_to(adds, instant, name)
  local fields = adds[instant]
  if fields == nil then
    fields = { n = 0 }
    adds[instant] = fields
  end
  fields[fields.n + 1] = name
  fields[fields.n + 2] = ''
  fields.n = fields.n + 2
end

-- The bucket moves of the (indexed, due) pairs in ARGV[first..last], one per c: key from
-- KEYS[key_first] on, checked: { adds = {instant -> {name, '', ...}},
-- dels = {instant -> {name, ...}} }.
local function due_plan(keys, key_first, args, first, last)
  local adds, dels, checked = {}, {}, { [''] = true }
  local skip = #keys[1] - 1 -- where a c: key's name starts (<base>c: is <base>meta less 2)
  local k = key_first
  for i = first, last, 2 do
    local old, new = args[i], args[i + 1]
    if not checked[old] then -- the few instants of a batch, each parsed once
      checked[old] = uint(old, 'indexed instant', keys[k])
    end
    if not checked[new] then
      checked[new] = uint(new, 'due instant', keys[k])
    end
    local name = (new ~= '' or old ~= '') and string.sub(keys[k], skip)
    if old ~= '' and old ~= new then
      local names = dels[old]
      if names == nil then
        names = { n = 0 }
        dels[old] = names
      end
      names.n = names.n + 1
      names[names.n] = name
    end
    if new ~= '' then -- even where it is indexed already: a wrong `indexed` must not lose it
      add_to(adds, new, name)
    end
    k = k + 1
  end
  return { adds = adds, dels = dels }
end

local function bucket_types(base, buckets)
  for instant in pairs(buckets.adds) do
    key_type(bucket_key(base, instant), 'hash', 'due bucket')
  end
  for instant in pairs(buckets.dels) do
    key_type(bucket_key(base, instant), 'hash', 'due bucket')
  end
end

-- An emptied bucket (Redis deletes an empty hash) leaves `at`.
local function unlist_if_empty(at, bucket, instant)
  if redis.call('EXISTS', bucket) == 0 then
    redis.call('ZREM', at, instant)
  end
end

local function bucket_del(base, at, instant, names)
  local bucket = bucket_key(base, instant)
  call_values('HDEL', bucket, names, 1, names.n or #names)
  unlist_if_empty(at, bucket, instant)
end

local function write_due(base, at, buckets)
  for instant, names in pairs(buckets.dels) do
    bucket_del(base, at, instant, names) -- before the adds, which may refill the bucket
  end
  local scores = {}
  for instant, fields in pairs(buckets.adds) do
    call_values('HSET', bucket_key(base, instant), fields, 1, fields.n)
    scores[#scores + 1] = instant
    scores[#scores + 1] = instant
  end
  call_values('ZADD', at, scores, 1, #scores)
end

-- commit

-- `first`: where the commit's ARGV starts (segment_worker_ack_commit puts the ack's before it).
local function check_commit_at(keys, args, first)
  local plan = { epoch = claimed_epoch(args[first]), server = server_arg(args[first + 1]) }
  local names = { 'n_set', 'n_del', 'n_out', 'n_off', 'n_pop' }
  for i, name in ipairs(names) do
    plan[name] = uint(args[first + 1 + i], name)
  end
  key_count(keys, 3 + plan.n_set + plan.n_del)
  arg_count(args, first - 1 + HEADER + plan.n_set + 2 * (plan.n_set + plan.n_del) + plan.n_out
    + 2 * plan.n_off + 2 * plan.n_pop)

  local base = base_of(keys[1])
  plan.base = base
  same_key(keys[2], base .. 'at', 'KEYS[2]')
  same_key(keys[3], base .. 'outbox', 'KEYS[3]')
  local customer = base .. 'c:'
  for i = 4, 3 + plan.n_set + plan.n_del do
    if string.find(keys[i], customer, 1, true) ~= 1 then -- plain find: no substring allocated
      fail('KEYS[' .. i .. '] must start with ' .. show(customer) .. ', got ' .. show(keys[i]))
    end
  end

  -- Offsets of each section in ARGV.
  plan.blobs = first + HEADER
  plan.due = plan.blobs + plan.n_set
  plan.out = plan.due + 2 * (plan.n_set + plan.n_del)
  plan.off = plan.out + plan.n_out
  plan.pop = plan.off + 2 * plan.n_off
  plan.buckets = due_plan(keys, 4, args, plan.due, plan.out - 1)
  plan.offsets = {}
  for i = plan.off, plan.pop - 1, 2 do
    topic_name(args[i], 'topic')
    local offset = uint(args[i + 1], 'offset', args[i])
    plan.offsets[#plan.offsets + 1] = { 'off:' .. args[i], offset, args[i + 1] }
  end
  for i = plan.pop, #args - 1, 2 do
    if #args[i] == 0 then
      fail('population field must not be empty')
    end
    int(args[i + 1], 'population delta', args[i])
  end

  plan.current = stored_epoch(keys[1])
  key_type(keys[2], 'zset', 'due key')
  bucket_types(base, plan.buckets)
  key_type(keys[3], 'list', 'outbox key')
  return plan
end

local function check_commit(keys, args)
  return check_commit_at(keys, args, 1)
end

-- The writes of a checked commit.
local function write_commit(keys, args, plan)
  mset(keys, 4, args, plan.blobs, plan.n_set)
  del_keys(keys, 4 + plan.n_set, 3 + plan.n_set + plan.n_del)
  write_due(plan.base, keys[2], plan.buckets)
  call_values('RPUSH', keys[3], args, plan.out, plan.off - 1)
  for _, offset in ipairs(plan.offsets) do
    local field, given, text = offset[1], offset[2], offset[3]
    local stored = redis.call('HGET', keys[1], field)
    if stored == false or given > (tonumber(stored) or -1) then
      redis.call('HSET', keys[1], field, text)
    end
  end
  for i = plan.pop, #args - 1, 2 do
    redis.call('HINCRBY', keys[1], 'pop:' .. args[i], args[i + 1])
  end
  redis.call('HINCRBY', keys[1], 'writes', 1)
  return redis.call('LLEN', keys[3])
end

local function commit(keys, args)
  local plan, err = admitted('segment_worker_commit', check_commit, keys, args)
  if err then
    return err
  end
  return write_commit(keys, args, plan) -- everything is checked: write
end

-- ack

-- The ack's count and relayed (ARGV[i], ARGV[i + 1]) into plan.
local function check_trim(args, i, plan)
  plan.count, plan.count_text = uint(args[i], 'count'), args[i]
  if args[i + 1] ~= '' then
    plan.relayed, plan.relayed_text = uint(args[i + 1], 'relayed'), args[i + 1]
  end
end

-- Trims plan.count records off the outbox's head and keeps relayed = max(stored, given).
local function trim(meta, outbox, plan)
  if plan.count > 0 then
    redis.call('LTRIM', outbox, plan.count_text, -1)
  end
  if plan.relayed ~= nil then
    local stored = tonumber(redis.call('HGET', meta, 'relayed') or '0')
    if plan.relayed > stored then
      redis.call('HSET', meta, 'relayed', plan.relayed_text)
    end
  end
end

local function check_ack(keys, args)
  key_count(keys, 2)
  arg_count(args, 4)
  local base = base_of(keys[1])
  same_key(keys[2], base .. 'outbox', 'KEYS[2]')
  local plan = { epoch = uint(args[1], 'epoch'), server = server_arg(args[2]) }
  check_trim(args, 3, plan)
  plan.current = stored_epoch(keys[1])
  key_type(keys[2], 'list', 'outbox key')
  return plan
end

local function ack(keys, args)
  local plan, err = admitted('segment_worker_ack', check_ack, keys, args)
  if err then
    return err
  end
  trim(keys[1], keys[2], plan)
  return redis.call('LLEN', keys[2])
end

-- ack_commit

local function check_ack_commit(keys, args)
  local plan = check_commit_at(keys, args, 3)
  check_trim(args, 1, plan)
  return plan
end

local function ack_commit(keys, args)
  local plan, err = admitted('segment_worker_ack_commit', check_ack_commit, keys, args)
  if err then
    return err
  end
  trim(keys[1], keys[3], plan)
  return write_commit(keys, args, plan)
end

-- erase

local function check_erase(keys, args)
  key_count(keys, 4)
  arg_count(args, 5)
  local base = base_of(keys[1])
  local plan = { epoch = uint(args[1], 'epoch'), server = server_arg(args[2]), base = base }
  same_key(keys[2], base .. 'at', 'KEYS[2]')
  same_key(keys[3], base .. 'c:' .. args[3], 'KEYS[3]')
  marker_key(keys[4], base, 'KEYS[4]')
  if args[4] ~= '' and uint(args[4], 'marker_ttl_ms') < 1 then
    fail('marker_ttl_ms must be >= 1 or empty (no marker), got ' .. show(args[4]))
  end
  plan.indexed = instant_arg(args[5], 'indexed instant', args[3])
  plan.current = stored_epoch(keys[1])
  key_type(keys[2], 'zset', 'due key')
  if plan.indexed ~= '' then
    key_type(bucket_key(base, plan.indexed), 'hash', 'due bucket')
  end
  return plan
end

local function erase(keys, args)
  local plan, err = admitted('segment_worker_erase', check_erase, keys, args)
  if err then
    return err
  end
  local deleted = redis.call('DEL', keys[3])
  if plan.indexed ~= '' then
    bucket_del(plan.base, keys[2], plan.indexed, { args[3] })
  end
  if args[4] ~= '' then
    redis.call('SET', keys[4], '1', 'PX', args[4])
  end
  redis.call('HINCRBY', keys[1], 'writes', 1)
  return deleted
end

-- forget

local function check_forget(keys, args)
  key_count(keys, 2)
  arg_count(args, 2)
  local base = base_of(keys[1])
  same_key(keys[2], base .. 'c:' .. args[2], 'KEYS[2]')
  return true
end

local function forget(keys, args)
  local _, err = checked('segment_worker_forget', check_forget, keys, args)
  if err then
    return err
  end
  if redis.call('GET', keys[2]) ~= args[1] then
    return 0
  end
  redis.call('DEL', keys[2])
  return 1
end

-- begin_rules, mark_rules

local function check_mark_rules(keys, args)
  key_count(keys, 1)
  arg_count(args, 3)
  base_of(keys[1])
  local plan = { epoch = claimed_epoch(args[1]), server = server_arg(args[2]) }
  if #args[3] == 0 then
    fail('rules version must not be empty')
  end
  plan.current = stored_epoch(keys[1])
  return plan
end

local function begin_rules(keys, args)
  local _, err = admitted('segment_worker_begin_rules', check_mark_rules, keys, args)
  if err then
    return err
  end
  redis.call('HSET', keys[1], 'rules_pass', args[3])
  return 1
end

local function mark_rules(keys, args)
  local _, err = admitted('segment_worker_mark_rules', check_mark_rules, keys, args)
  if err then
    return err
  end
  redis.call('HSET', keys[1], 'rules', args[3])
  redis.call('HDEL', keys[1], 'rules_pass')
  return 1
end

-- recount

local function check_recount(keys, args)
  key_count(keys, 1)
  base_of(keys[1])
  if #args < 2 or #args % 2 ~= 0 then
    fail('expected server, writes and (field, count) pairs, got ' .. #args .. ' arguments')
  end
  local plan = { server = server_arg(args[1]), writes = uint(args[2], 'writes') }
  for i = 3, #args - 1, 2 do
    if #args[i] == 0 then
      fail('population field must not be empty')
    end
    uint(args[i + 1], 'population count', args[i])
  end
  key_type(keys[1], 'hash', 'meta key')
  plan.current = uint(redis.call('HGET', keys[1], 'writes') or '0', 'stored writes')
  return plan
end

local function recount(keys, args)
  local plan, err = checked('segment_worker_recount', check_recount, keys, args)
  if err then
    return err
  end
  local here = run_id()
  if plan.server ~= here then
    return redis.error_reply('RESET current=' .. here .. ' given=' .. plan.server)
  end
  if plan.current ~= plan.writes then
    return redis.error_reply('CHANGED current=' .. plan.current .. ' given=' .. plan.writes)
  end
  local fields, stale = redis.call('HGETALL', keys[1]), {}
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 4) == 'pop:' then
      stale[#stale + 1] = fields[i]
    end
  end
  call_values('HDEL', keys[1], stale, 1, #stale)
  for i = 3, #args - 1, 2 do
    redis.call('HSET', keys[1], 'pop:' .. args[i], args[i + 1])
  end
  return 1
end

-- read

local function check_read(keys, args)
  local base = base_of(keys[1])
  if #keys % 2 ~= 1 then
    fail('expected meta and as many x: keys as c: keys, got ' .. #keys .. ' keys')
  end
  local n = (#keys - 1) / 2
  for i = 2, n + 1 do
    if string.sub(keys[i], 1, #base + 2) ~= base .. 'c:' then
      fail('KEYS[' .. i .. '] must be ' .. show(base .. 'c:<id>') .. ', got ' .. show(keys[i]))
    end
    marker_key(keys[i + n], base, 'KEYS[' .. i + n .. ']')
  end
  arg_count(args, 0)
  return n
end

local function read(keys, args)
  local n, err = checked('segment_worker_read', check_read, keys, args)
  if err then
    return err
  end
  local out = { run_id() }
  for i = 2, n + 1 do
    local state = redis.call('GET', keys[i])
    out[i] = state
    out[i + n] = (state == false and redis.call('EXISTS', keys[i + n]) == 1) and 1 or 0
  end
  return out
end

-- due

local function check_due(keys, args)
  key_count(keys, 2)
  arg_count(args, 2)
  local base = keys[1] and string.match(keys[1], '^([^{}]*{p%d+}:)at$')
  if base == nil then
    fail('KEYS[1] must be <prefix>:{p<N>}:at (no braces in the prefix), got ' .. show(keys[1]))
  end
  same_key(keys[2], base .. 'due', 'KEYS[2]')
  local plan = { base = base, now = uint(args[1], 'now'), limit = uint(args[2], 'limit') }
  if plan.limit < 1 then
    fail('limit must be >= 1, got ' .. show(args[2]))
  end
  key_type(keys[1], 'zset', 'due key')
  key_type(keys[2], 'zset', 'old due key')
  return plan
end

-- Moves up to `limit` entries of the old index, earliest first, into the buckets.
local function migrate(base, at, old, limit)
  local entries = redis.call('ZRANGE', old, 0, limit - 1, 'WITHSCORES')
  local adds, moved = {}, {}
  for i = 1, #entries, 2 do
    local name, instant = entries[i], string.format('%.0f', tonumber(entries[i + 1]))
    if redis.call('EXISTS', base .. 'c:' .. name) == 1 then
      add_to(adds, instant, name)
    end
    moved[#moved + 1] = name
  end
  write_due(base, at, { adds = adds, dels = {} })
  call_values('ZREM', old, moved, 1, #moved)
end

local function due(keys, args)
  local plan, err = checked('segment_worker_due', check_due, keys, args)
  if err then
    return err
  end
  local base, at, limit = plan.base, keys[1], plan.limit
  migrate(base, at, keys[2], limit)
  local out, seen = {}, {}
  local instants = redis.call('ZRANGEBYSCORE', at, '-inf', plan.now, 'LIMIT', 0, limit)
  for _, instant in ipairs(instants) do
    local bucket = bucket_key(base, instant)
    local cursor = '0'
    repeat
      local reply = redis.call('HSCAN', bucket, cursor, 'COUNT', limit)
      cursor = reply[1]
      local fields = reply[2]
      for i = 1, #fields, 2 do
        local name = fields[i]
        if redis.call('EXISTS', base .. 'c:' .. name) == 0 then
          redis.call('HDEL', bucket, name) -- forgotten: no state, nothing to fire
        elseif not seen[name] and #out < 2 * limit then -- SCAN may return a name twice
          seen[name] = true
          out[#out + 1] = instant
          out[#out + 1] = name
        end
      end
    until cursor == '0' or #out >= 2 * limit
    unlist_if_empty(at, bucket, instant)
    if #out >= 2 * limit then
      break
    end
  end
  return out
end

local function version(keys, args)
  return LIBRARY_VERSION
end

redis.register_function('segment_worker_claim', claim)
redis.register_function('segment_worker_commit', commit)
redis.register_function('segment_worker_ack', ack)
redis.register_function('segment_worker_ack_commit', ack_commit)
redis.register_function('segment_worker_erase', erase)
redis.register_function('segment_worker_begin_rules', begin_rules)
redis.register_function('segment_worker_mark_rules', mark_rules)
redis.register_function('segment_worker_forget', forget)
redis.register_function('segment_worker_due', due)
redis.register_function('segment_worker_recount', recount)
redis.register_function{
  function_name = 'segment_worker_read', callback = read, flags = { 'no-writes' },
}
redis.register_function{
  function_name = 'segment_worker_version', callback = version, flags = { 'no-writes' },
}

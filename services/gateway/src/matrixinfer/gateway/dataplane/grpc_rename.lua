-- MatrixInfer: rewrites the head of a unary gRPC request's message.
-- txn.rename: a route whose public model name differs from the name Triton serves
--   (the canary walk-through's iris -> iris-v2): field 1 (model_name) becomes it.
-- txn.prio: a route rule's Triton priority: a parameters entry ("priority",
--   uint64_param) goes after the request's own fields 1-4, so it replaces a
--   priority the client named (the last map entry wins).
-- The message's 5-byte length prefix is fixed. Only fields 1-4 are read; tensors
-- never are. A body it cannot parse (compressed, truncated head) passes unchanged,
-- and Triton answers.

local Rename = {}
Rename.id = "grpc-rename"
Rename.flags = filter.FLT_CFG_FL_HTX
Rename.__index = Rename

function Rename:new()
  local instance = { done = false }
  setmetatable(instance, Rename)
  return instance
end

local function encode_varint(n)
  local bytes = {}
  repeat
    local low = n & 0x7f
    n = n >> 7
    if n > 0 then low = low | 0x80 end
    bytes[#bytes + 1] = string.char(low)
  until n == 0
  return table.concat(bytes)
end

local function decode_varint(s, pos)
  local value, shift = 0, 0
  while shift <= 28 do
    local b = s:byte(pos)
    if b == nil then return nil end
    value = value | ((b & 0x7f) << shift)
    pos = pos + 1
    if b < 0x80 then return value, pos end
    shift = shift + 7
  end
  return nil
end

function Rename:start_analyze(txn, chn)
  if chn:is_resp() then return end
  self.name = txn:get_var("txn.rename")
  self.prio = txn:get_var("txn.prio")
  if self.name ~= nil or self.prio ~= nil then
    self.chn = chn
    filter.register_data_filter(self, chn)
  end
end

local function field_end(s, key, pos)
  local wire = key & 7
  if wire == 0 then
    local _, after = decode_varint(s, pos)
    return after
  elseif wire == 2 then
    local n, at = decode_varint(s, pos)
    if n == nil or at + n - 1 > #s then return nil end
    return at + n
  elseif wire == 1 then
    return pos + 8 <= #s + 1 and pos + 8 or nil
  elseif wire == 5 then
    return pos + 4 <= #s + 1 and pos + 4 or nil
  end
  return nil
end

local function priority_entry(level)
  local param = "\x28" .. encode_varint(level) -- InferParameter.uint64_param
  local entry = "\x0a\x08priority\x12" .. encode_varint(#param) .. param
  return "\x22" .. encode_varint(#entry) .. entry -- ModelInferRequest.parameters
end

function Rename:http_payload(txn, msg)
  if self.done then return end
  local head = msg:body()
  if head == nil or #head < 7 then return end
  self.done = true
  filter.unregister_data_filter(self, self.chn)
  if head:byte(1) ~= 0 then return end
  local size = (head:byte(2) << 24) | (head:byte(3) << 16) | (head:byte(4) << 8) | head:byte(5)
  -- Fields 1-4 as they are (model_name renamed), until the first field >= 5.
  local parts, pos = {}, 6
  while pos <= #head and pos <= 5 + size do
    local key, at = decode_varint(head, pos)
    if key == nil then return end
    if (key >> 3) >= 5 then break end
    local stop = field_end(head, key, at)
    if stop == nil then return end
    if (key >> 3) == 1 and (key & 7) == 2 and self.name ~= nil then
      parts[#parts + 1] = "\x0a" .. encode_varint(#self.name) .. self.name
    else
      parts[#parts + 1] = head:sub(pos, stop - 1)
    end
    pos = stop
  end
  if self.prio ~= nil then parts[#parts + 1] = priority_entry(tonumber(self.prio)) end
  local fields = table.concat(parts)
  local new_size = size - (pos - 6) + #fields
  local prefix = string.char(0, (new_size >> 24) & 0xff, (new_size >> 16) & 0xff,
                             (new_size >> 8) & 0xff, new_size & 0xff)
  msg:set(prefix .. fields, 0, pos - 1)
end

core.register_filter("grpc-rename", Rename, function(instance, args) return instance end)

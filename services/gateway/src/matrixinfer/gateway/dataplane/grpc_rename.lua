-- MatrixInfer: a route whose public model name differs from the name Triton serves
-- (the canary walk-through's iris -> iris-v2). HAProxy sets txn.rename to the
-- Triton name; this filter rewrites field 1 (model_name) of the request's first
-- gRPC message to it and fixes the message's 5-byte length prefix. Only the head
-- of the body is touched; tensors are never read. A body it cannot parse (a
-- compressed message, another field first) passes unchanged, and Triton answers.

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
  if self.name ~= nil then
    self.chn = chn
    filter.register_data_filter(self, chn)
  end
end

function Rename:http_payload(txn, msg)
  if self.done then return end
  -- prefix (5) + tag (1) + length varint (<= 5) + a name of up to 256 bytes
  local head = msg:body(0, 267)
  if head == nil or #head < 7 then return end
  self.done = true
  filter.unregister_data_filter(self, self.chn)
  if head:byte(1) ~= 0 or head:byte(6) ~= 0x0a then return end
  local size = (head:byte(2) << 24) | (head:byte(3) << 16) | (head:byte(4) << 8) | head:byte(5)
  local name_len, name_at = decode_varint(head, 7)
  if name_len == nil or #head < name_at - 1 + name_len then return end
  local old_end = name_at - 1 + name_len
  local field = "\x0a" .. encode_varint(#self.name) .. self.name
  local new_size = size - (old_end - 5) + #field
  local prefix = string.char(0, (new_size >> 24) & 0xff, (new_size >> 16) & 0xff,
                             (new_size >> 8) & 0xff, new_size & 0xff)
  msg:set(prefix .. field, 0, old_end)
end

core.register_filter("grpc-rename", Rename, function(instance, args) return instance end)

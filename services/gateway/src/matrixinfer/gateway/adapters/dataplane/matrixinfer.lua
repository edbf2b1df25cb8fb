-- MatrixInfer's Lua for HAProxy (loaded per thread; one file, so the protobuf
-- helpers exist once).
--
-- Tensor checks: refuse inference requests whose tensors do not hold what their
-- shapes say, before they reach a replica. Triton (the version the pytriton wheel
-- carries) hands a short raw buffer to the model as if it were whole, and answers
-- a negative dimension with INTERNAL. The same rules, in Python, guard the
-- gateway's slow path (matrixinfer.gateway.domain.tensors): keep the two in step. Both
-- checks are converters, not actions: HAProxy hands a converter its input alone,
-- without building a transaction object per call.
--   grpc_tensor_check  the buffered ModelInferRequest (5-byte gRPC prefix first),
--                      in hex
--   rest_tensor_check  "<header length>:<content length>:<body>" of a KServe v2
--                      REST request with binary tensor data
-- Each returns "" (fine), "L" (the part HAProxy buffered is too short to decide:
-- the gateway's Python checks the whole request) or the error message
-- (percent-encoded for grpc-message).
--
-- The grpc-rename filter rewrites the head of a unary gRPC request's message:
-- txn.rename: a route whose public model name differs from the name Triton serves
--   (the canary walk-through's iris -> iris-v2): field 1 (model_name) becomes it.
-- txn.prio: a route rule's Triton priority: a parameters entry ("priority",
--   uint64_param) goes after the request's own fields 1-4, so it replaces a
--   priority the client named (the last map entry wins).
-- The message's 5-byte length prefix is fixed; tensors are never read. A body it
-- cannot parse (compressed, truncated head) passes unchanged, and Triton answers.

local SIZES = {
  BOOL = 1, UINT8 = 1, INT8 = 1, UINT16 = 2, INT16 = 2, FP16 = 2, BF16 = 2,
  UINT32 = 4, INT32 = 4, FP32 = 4, UINT64 = 8, INT64 = 8, FP64 = 8,
}
-- InferTensorContents: field number -> (datatypes it carries, encoded width;
-- 0: varint). bytes_contents (8) is one length-delimited field per element.
local CONTENT_WIDTH = { [1] = 0, [2] = 0, [3] = 0, [4] = 0, [5] = 0, [6] = 4, [7] = 8 }
local MAX_ELEMENTS = 1 << 40

local function varint(s, pos, limit)
  local value, shift = 0, 0
  while pos <= limit and shift < 64 do
    local b = s:byte(pos)
    value = value | ((b & 0x7f) << shift)
    pos = pos + 1
    if b < 0x80 then return value, pos end
    shift = shift + 7
  end
  return nil
end

-- Skips one field's value; returns the position after it, or nil (malformed or
-- past limit).
local function skip(s, wire, pos, limit)
  if wire == 0 then
    local _, after = varint(s, pos, limit)
    return after
  elseif wire == 1 then
    return pos + 8 <= limit + 1 and pos + 8 or nil
  elseif wire == 5 then
    return pos + 4 <= limit + 1 and pos + 4 or nil
  elseif wire == 2 then
    local n, at = varint(s, pos, limit)
    if n == nil or at + n > limit + 1 then return nil end
    return at + n
  end
  return nil
end

local function shape_text(shape)
  local parts = {}
  for i, d in ipairs(shape) do parts[i] = tostring(d) end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- Number of elements a shape holds, or nil and the message when a dimension is
-- negative or the count is absurd.
local function elements(name, shape)
  for _, d in ipairs(shape) do
    if d < 0 then
      return nil, string.format("input '%s': shape %s has a negative dimension",
                                name, shape_text(shape))
    end
  end
  local n = 1
  for _, d in ipairs(shape) do
    if d == 0 then return 0 end
  end
  for _, d in ipairs(shape) do
    if d > MAX_ELEMENTS // n then
      return nil, string.format("input '%s': shape %s is too large", name,
                                shape_text(shape))
    end
    n = n * d
  end
  return n
end

-- One InferInputTensor (s[from..to]): its name, datatype, shape, whether it has
-- parameters, and the number of elements its contents hold (nil: no contents).
local function parse_input(s, from, to)
  local t = { name = "", datatype = "", shape = {}, params = false, count = nil }
  local pos = from
  while pos <= to do
    local key, at = varint(s, pos, to)
    if key == nil then return nil end
    local field, wire = key >> 3, key & 7
    if field == 1 and wire == 2 then
      local n, p = varint(s, at, to)
      if n == nil or p + n > to + 1 then return nil end
      t.name = s:sub(p, p + n - 1)
      pos = p + n
    elseif field == 2 and wire == 2 then
      local n, p = varint(s, at, to)
      if n == nil or p + n > to + 1 then return nil end
      t.datatype = s:sub(p, p + n - 1)
      pos = p + n
    elseif field == 3 and wire == 2 then -- packed int64 dims
      local n, p = varint(s, at, to)
      if n == nil or p + n > to + 1 then return nil end
      local stop = p + n - 1
      while p <= stop do
        local d
        d, p = varint(s, p, stop)
        if d == nil then return nil end
        t.shape[#t.shape + 1] = d -- two's complement: negative stays negative
      end
      pos = stop + 1
    elseif field == 3 and wire == 0 then -- one unpacked dim
      local d, p = varint(s, at, to)
      if d == nil then return nil end
      t.shape[#t.shape + 1] = d
      pos = p
    elseif field == 5 and wire == 2 then -- InferTensorContents
      local n, p = varint(s, at, to)
      if n == nil or p + n > to + 1 then return nil end
      local stop = p + n - 1
      local count = t.count or 0
      while p <= stop do
        local ckey, cp = varint(s, p, stop)
        if ckey == nil then return nil end
        local cfield, cwire = ckey >> 3, ckey & 7
        local width = CONTENT_WIDTH[cfield]
        if cwire == 2 and width ~= nil then -- packed scalars
          local m, q = varint(s, cp, stop)
          if m == nil or q + m > stop + 1 then return nil end
          if width == 0 then
            for i = q, q + m - 1 do
              if s:byte(i) < 0x80 then count = count + 1 end
            end
          else
            count = count + m // width
          end
          p = q + m
        else -- bytes_contents, or one unpacked scalar: one element
          p = skip(s, cwire, cp, stop)
          if p == nil then return nil end
          count = count + 1
        end
      end
      t.count = count
      pos = stop + 1
    else
      if field == 4 then t.params = true end
      pos = skip(s, wire, at, to)
      if pos == nil then return nil end
    end
  end
  return t
end

-- BYTES elements in a raw buffer: each is a 4-byte little-endian length, then
-- that many bytes. Returns the count, or nil when the buffer does not split.
local function bytes_elements(s, from, to)
  local count, pos = 0, from
  while pos <= to do
    if pos + 3 > to then return nil end
    local b1, b2, b3, b4 = s:byte(pos, pos + 3)
    pos = pos + 4 + (b1 | (b2 << 8) | (b3 << 16) | (b4 << 24))
    count = count + 1
  end
  if pos ~= to + 1 then return nil end
  return count
end

local function raw_mismatch(t, got, want)
  return string.format("input '%s': %d bytes of raw data for shape %s %s, expected %d",
                       t.name, got, shape_text(t.shape), t.datatype, want)
end

-- A body handed over as hex (HAProxy 2.6 casts a converter's binary input to a
-- string, which ends at the first NUL byte): read like a string, one byte at a
-- time, without decoding what is never looked at (the tensors).
local Hex = {}
Hex.__index = Hex

local function hex_bytes(text)
  return setmetatable({ h = text, n = #text // 2 }, Hex)
end

function Hex:byte(i, j)
  j = math.min(j or i, self.n)
  if i < 1 or i > j then return nil end
  if i == j then return tonumber(self.h:sub(2 * i - 1, 2 * i), 16) end
  local out = {}
  for k = i, j do out[#out + 1] = tonumber(self.h:sub(2 * k - 1, 2 * k), 16) end
  return table.unpack(out)
end

function Hex:sub(i, j)
  return (self.h:sub(2 * i - 1, 2 * j):gsub("%x%x", function(x)
    return string.char(tonumber(x, 16))
  end))
end

-- The verdict on a ModelInferRequest: nil (fine), "large" (cannot decide from the
-- buffered part), or an error message.
local function check_infer(body)
  if body.n < 5 or body:byte(1) ~= 0 then return nil end -- compressed: Triton decides
  local size = (body:byte(2) << 24) | (body:byte(3) << 16) | (body:byte(4) << 8) | body:byte(5)
  local last = 5 + size -- the message is body[6..last]
  local seen = math.min(body.n, last)
  local inputs, raws = {}, {}
  local pos = 6
  while pos <= seen do
    local key, at = varint(body, pos, seen)
    if key == nil then return "large" end
    local field, wire = key >> 3, key & 7
    if wire == 2 then
      local n, p = varint(body, at, seen)
      if n == nil then return "large" end
      if field == 7 then
        raws[#raws + 1] = { from = p, len = n }
      elseif field == 5 then
        if p + n - 1 > seen then return "large" end
        local t = parse_input(body, p, p + n - 1)
        if t == nil then return nil end -- malformed: Triton answers it
        inputs[#inputs + 1] = t
      end
      pos = p + n
    else
      pos = skip(body, wire, at, seen)
      if pos == nil then return "large" end
    end
  end
  if seen == last then
    if pos ~= last + 1 then return nil end -- malformed: Triton answers it
  elseif pos ~= last + 1 or #raws == 0
      or raws[#raws].from + raws[#raws].len ~= last + 1 then
    -- Only the last raw tensor may run past what was buffered: it ends where the
    -- message ends, which the prefix says.
    return "large"
  end
  local params = false
  for _, t in ipairs(inputs) do
    local count, err = elements(t.name, t.shape)
    if count == nil then return err end
    t.elements = count
    params = params or t.params
  end
  -- Shared memory and other per-input parameters: Triton decides.
  if params then return nil end
  if #raws > 0 then
    if #raws ~= #inputs then
      return string.format("%d raw_input_contents for %d inputs", #raws, #inputs)
    end
    for i, t in ipairs(inputs) do
      local raw = raws[i]
      local width = SIZES[t.datatype]
      if width ~= nil then
        if raw.len ~= t.elements * width then
          return raw_mismatch(t, raw.len, t.elements * width)
        end
      elseif t.datatype == "BYTES" then
        if raw.from + raw.len - 1 > seen then return "large" end
        local n = bytes_elements(body, raw.from, raw.from + raw.len - 1)
        if n ~= t.elements then
          return string.format("input '%s': raw BYTES data does not hold %d elements "
                               .. "for shape %s", t.name, t.elements, shape_text(t.shape))
        end
      end
    end
    return nil
  end
  for _, t in ipairs(inputs) do
    if t.count == nil then
      return string.format("input '%s' has no data", t.name)
    end
    if t.count ~= t.elements then
      return string.format("input '%s': %d %s values for shape %s, expected %d",
                           t.name, t.count, t.datatype, shape_text(t.shape), t.elements)
    end
  end
  return nil
end

-- grpc-message is percent-encoded: '%' and bytes outside printable ASCII.
local function percent_encode(text)
  return (text:gsub("[^\x20-\x24\x26-\x7e]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

core.register_converters("grpc_tensor_check", function(hex)
  local verdict = check_infer(hex_bytes(hex or ""))
  if verdict == nil then return "" end
  if verdict == "large" then return "L" end
  return percent_encode(verdict)
end)

-- A minimal JSON reader for the REST inference header: objects, arrays, strings
-- (escapes kept as written), numbers, true/false/null. Returns value, next
-- position; nil when the text is not JSON (Triton answers it).
local json_value
local json_null = {}

local function json_space(s, pos)
  return s:find("[^ \t\r\n]", pos) or #s + 1
end

local function json_string(s, pos)
  local i = pos + 1
  local parts = {}
  while true do
    local c = s:sub(i, i)
    if c == "" then return nil end
    if c == '"' then return table.concat(parts), i + 1 end
    if c == "\\" then
      parts[#parts + 1] = s:sub(i, i + 1)
      i = i + 2
    else
      parts[#parts + 1] = c
      i = i + 1
    end
  end
end

json_value = function(s, pos, depth)
  if depth > 32 then return nil end
  pos = json_space(s, pos)
  local c = s:sub(pos, pos)
  if c == "{" then
    local obj = {}
    pos = json_space(s, pos + 1)
    if s:sub(pos, pos) == "}" then return obj, pos + 1 end
    while true do
      pos = json_space(s, pos)
      if s:sub(pos, pos) ~= '"' then return nil end
      local key
      key, pos = json_string(s, pos)
      if key == nil then return nil end
      pos = json_space(s, pos)
      if s:sub(pos, pos) ~= ":" then return nil end
      local value
      value, pos = json_value(s, pos + 1, depth + 1)
      if pos == nil then return nil end
      obj[key] = value
      pos = json_space(s, pos)
      c = s:sub(pos, pos)
      if c == "}" then return obj, pos + 1 end
      if c ~= "," then return nil end
      pos = pos + 1
    end
  elseif c == "[" then
    local arr = { n = 0 }
    pos = json_space(s, pos + 1)
    if s:sub(pos, pos) == "]" then return arr, pos + 1 end
    while true do
      local value
      value, pos = json_value(s, pos, depth + 1)
      if pos == nil then return nil end
      arr.n = arr.n + 1
      arr[arr.n] = value
      pos = json_space(s, pos)
      c = s:sub(pos, pos)
      if c == "]" then return arr, pos + 1 end
      if c ~= "," then return nil end
      pos = pos + 1
    end
  elseif c == '"' then
    return json_string(s, pos)
  end
  local literal = s:match("^-?[%d.eE+-]+", pos)
  if literal ~= nil then return tonumber(literal), pos + #literal end
  for word, value in pairs({ ["true"] = true, ["false"] = false, ["null"] = json_null }) do
    if s:sub(pos, pos + #word - 1) == word then return value, pos + #word end
  end
  return nil
end

-- The verdict on a REST body with binary tensor data (the JSON header is the
-- first header_len bytes; total is the Content-Length, or nil).
local function check_rest(body, header_len, total)
  if header_len == nil or header_len < 0 then return nil end
  if #body < header_len then return "large" end
  local header = json_value(body:sub(1, header_len), 1, 0)
  if type(header) ~= "table" or type(header.inputs) ~= "table" then return nil end
  local declared = 0
  for i = 1, header.inputs.n or 0 do
    local t = header.inputs[i]
    if type(t) ~= "table" then return nil end
    local p = t.parameters
    local size = type(p) == "table" and p.binary_data_size or nil
    if size ~= nil then
      if type(t.shape) ~= "table" or math.type(size) ~= "integer" then return nil end
      local shape = {}
      for j = 1, t.shape.n do
        if math.type(t.shape[j]) ~= "integer" then return nil end
        shape[j] = t.shape[j]
      end
      local info = { name = tostring(t.name), datatype = tostring(t.datatype), shape = shape }
      local count, err = elements(info.name, shape)
      if count == nil then return err end
      local width = SIZES[info.datatype]
      if width ~= nil and size ~= count * width then
        return string.format("input '%s': binary_data_size %d for shape %s %s, expected %d",
                             info.name, size, shape_text(shape), info.datatype, count * width)
      end
      declared = declared + size
    end
  end
  if total ~= nil and total ~= header_len + declared then
    return string.format("the body holds %d bytes of binary data, the inputs declare %d",
                         total - header_len, declared)
  end
  return nil
end

core.register_converters("rest_tensor_check", function(text)
  -- A binary input is cast to a string that ends at its first NUL byte: the JSON
  -- header, which holds none, arrives whole (the tensor bytes are not needed).
  local header_len, total, body = (text or ""):match("^(%d*):(%d*):(.*)$")
  if header_len == nil then return "" end
  local verdict = check_rest(body, tonumber(header_len), tonumber(total))
  if verdict == nil then return "" end
  if verdict == "large" then return "L" end
  return verdict
end)

-- The grpc-rename filter (see the top of this file).

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

local function priority_entry(level)
  local param = "\x28" .. encode_varint(level) -- InferParameter.uint64_param
  local entry = "\x0a\x08priority\x12" .. encode_varint(#param) .. param
  return "\x22" .. encode_varint(#entry) .. entry -- ModelInferRequest.parameters
end

local Rename = {}
Rename.id = "grpc-rename"
Rename.flags = filter.FLT_CFG_FL_HTX
Rename.__index = Rename

function Rename:new()
  local instance = { done = false }
  setmetatable(instance, Rename)
  return instance
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

function Rename:http_payload(txn, msg)
  if self.done then return end
  -- A rename needs field 1 only (prefix, tag, length, a name of up to 256 bytes);
  -- a priority goes after fields 1-4, so it needs what the frontend buffered.
  local head = self.prio ~= nil and msg:body() or msg:body(0, 267)
  if head == nil or #head < 7 then return end
  self.done = true
  filter.unregister_data_filter(self, self.chn)
  if head:byte(1) ~= 0 then return end
  local size = (head:byte(2) << 24) | (head:byte(3) << 16) | (head:byte(4) << 8) | head:byte(5)
  local limit = math.min(#head, 5 + size)
  -- Fields as they are (model_name renamed), up to the first field >= 5, or only
  -- field 1 when there is no priority to add.
  local parts, pos = {}, 6
  while pos <= limit do
    local key, at = varint(head, pos, limit)
    if key == nil then return end
    local field = key >> 3
    if field >= 5 then break end
    local stop = skip(head, key & 7, at, limit)
    if stop == nil then return end
    if field == 1 and (key & 7) == 2 and self.name ~= nil then
      parts[#parts + 1] = "\x0a" .. encode_varint(#self.name) .. self.name
    else
      parts[#parts + 1] = head:sub(pos, stop - 1)
    end
    pos = stop
    if self.prio == nil and field == 1 then break end
  end
  if self.prio ~= nil then parts[#parts + 1] = priority_entry(tonumber(self.prio)) end
  local fields = table.concat(parts)
  local new_size = size - (pos - 6) + #fields
  local prefix = string.char(0, (new_size >> 24) & 0xff, (new_size >> 16) & 0xff,
                             (new_size >> 8) & 0xff, new_size & 0xff)
  msg:set(prefix .. fields, 0, pos - 1)
end

core.register_filter("grpc-rename", Rename, function(instance, args) return instance end)

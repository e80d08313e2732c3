-- Argo CD health check for interlace.dev/PruneJob (resource.customizations.health.interlace.dev_PruneJob).
--
-- Argo CD runs this in gopher-lua (Lua 5.1) with the live object in `obj`; it must return a table
-- {status = Healthy|Progressing|Degraded|Suspended|Unknown, message = "..."}.
-- Conditions are the source of truth (Failed > Suspended > Succeeded); status.phase is the fallback
-- for objects the operator has not given conditions yet. While in progress, the Ready condition's
-- reason and message (False until success, with the current reason) describe what it waits for. A spec change the operator has not
-- observed yet (status.observedGeneration < metadata.generation) is always Progressing, so a sync
-- never reports the previous run's result for a new spec.

local hs = {}

local function find_condition(conditions, ctype)
  if type(conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason
  local message = c.message
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then
    return message
  end
  if reason ~= nil and reason ~= "" then
    return reason
  end
  return fallback
end

local function progress_text(status)
  local p = status.progress
  if type(p) ~= "table" then
    return ""
  end
  local parts = {}
  if type(p.percent) == "number" then
    table.insert(parts, tostring(math.floor(p.percent)) .. "%")
  end
  if type(p.step) == "number" and type(p.totalSteps) == "number" then
    table.insert(parts, "step " .. tostring(math.floor(p.step)) .. "/" .. tostring(math.floor(p.totalSteps)))
  end
  if type(p.message) == "string" and p.message ~= "" then
    table.insert(parts, p.message)
  end
  if #parts == 0 then
    return ""
  end
  return " (" .. table.concat(parts, ", ") .. ")"
end

local in_progress = {
  Pending = true,
  Analyzing = true,
  Planning = true,
  Finetuning = true,
  Evaluating = true,
  Publishing = true,
}

local status = obj.status
if type(status) ~= "table" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the PruneJob"
  return hs
end

local generation = nil
if type(obj.metadata) == "table" then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if type(generation) == "number" and type(observed) == "number" and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(math.floor(generation))
  return hs
end

local conditions = status.conditions
local failed = find_condition(conditions, "Failed")
local suspended = find_condition(conditions, "Suspended")
local succeeded = find_condition(conditions, "Succeeded")
local ready = find_condition(conditions, "Ready")
local phase = status.phase

if (failed ~= nil and failed.status == "True") or (failed == nil and phase == "Failed") then
  hs.status = "Degraded"
  hs.message = describe(failed, "PruneJob failed")
  return hs
end

if (suspended ~= nil and suspended.status == "True") or (suspended == nil and phase == "Suspended") then
  hs.status = "Suspended"
  hs.message = describe(suspended, "PruneJob is suspended")
  return hs
end

if (succeeded ~= nil and succeeded.status == "True") or (succeeded == nil and phase == "Succeeded") then
  hs.status = "Healthy"
  hs.message = describe(succeeded, describe(ready, "PruneJob succeeded"))
  return hs
end

if phase == nil or in_progress[phase] then
  hs.status = "Progressing"
  local what = phase or "Pending"
  local detail = describe(ready, "")
  if detail ~= "" then
    detail = ": " .. detail
  end
  hs.message = what .. progress_text(status) .. detail
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown PruneJob phase " .. tostring(phase)
return hs

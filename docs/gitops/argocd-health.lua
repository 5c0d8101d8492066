-- Argo CD health check for k2think.dev/K2ThinkDeployment.
-- Argo CD passes the live object as the global `obj` and expects a table {status, message}.
-- Install: docs/gitops.md (resource.customizations.health.k2think.dev_K2ThinkDeployment).
-- Plain Lua 5.1 (what Argo CD's gopher-lua runs); tested with Debian's lua5.4 and Lua 5.1 in
-- tests/test_argocd_health.py.
--
--   Degraded     InvalidSpec=True or Degraded=True (the message says why)
--   Suspended    spec.suspend is true
--   Healthy      Ready=True
--   Progressing  anything else: no status yet, status older than the spec, still deploying
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local spec = obj.spec or {}
local status = obj.status
local generation = (obj.metadata or {}).generation

if status == nil then
  if spec.suspend == true then
    hs.status = "Suspended"
    hs.message = "spec.suspend is true"
  end
  return hs
end

-- Conditions describe an older spec until the operator has observed the current generation.
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions
local invalid = condition(conditions, "InvalidSpec")
if invalid ~= nil and invalid.status == "True" then
  hs.status = "Degraded"
  hs.message = "Invalid spec: " .. text(invalid, "see the InvalidSpec condition")
  return hs
end

local degraded = condition(conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "see the Degraded condition")
  return hs
end

if spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true"
  return hs
end

local ready = condition(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "Serving")
  if status.endpoint ~= nil then
    hs.message = hs.message .. " at " .. status.endpoint
  end
  return hs
end

local blocked = condition(conditions, "CapacityBlocked")
if blocked ~= nil and blocked.status == "True" then
  hs.message = "Waiting for GPU capacity: " .. text(blocked, "pods are unschedulable")
  return hs
end
hs.message = text(ready, text(condition(conditions, "Progressing"), hs.message))
return hs

-- Argo CD resource health of exact-operator's custom resources, for both kinds:
--   resource.customizations.health.exact-operator.io_ExactConnection
--   resource.customizations.health.exact-operator.io_ExactOAuthClient
-- (see docs/argocd-health.md). Argo CD runs it with the object as the global `obj` and
-- takes the returned table {status = ..., message = ...}. Plain Lua 5.1, as Argo CD's
-- interpreter (gopher-lua) speaks it; tests/argocd_health.rs runs it on status objects
-- shaped like the ones the operator writes.
--
--   no status yet, or status older than the spec (observedGeneration < generation)
--                                                  -> Progressing
--   Ready=True                                     -> Healthy
--   reason Suspended                               -> Suspended
--   reason AwaitingAuthorization, Pending          -> Progressing (waiting for a person's
--                                                     consent, or for the first token)
--   reason ReauthorizationRequired, InvalidClient, ClientNotReady, ClientNotAllowed,
--     TargetSecretConflict, InvalidSpec, RefreshFailing, SecretNotFound
--                                                  -> Degraded (needs attention)
--   Ready=Unknown, or no Ready condition           -> Progressing
--   Ready=False with any other reason              -> Degraded

local hs = {}

local PROGRESSING = {
  AwaitingAuthorization = true,
  Pending = true,
}

local DEGRADED = {
  ReauthorizationRequired = true,
  InvalidClient = true,
  ClientNotReady = true,
  ClientNotAllowed = true,
  TargetSecretConflict = true,
  InvalidSpec = true,
  RefreshFailing = true,
  SecretNotFound = true,
}

local function describe(reason, message)
  if message ~= nil and message ~= "" then
    if reason ~= nil and reason ~= "" then
      return reason .. ": " .. message
    end
    return message
  end
  return reason or ""
end

-- "3", not "3.0": Argo CD hands numbers over as floats.
local function whole(n)
  return tostring(math.floor(n))
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for exact-operator to report status"
  return hs
end

local ready = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if observed == nil and ready ~= nil then
  observed = ready.observedGeneration
end
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for exact-operator to observe generation " .. whole(generation)
    .. " (status is for generation " .. whole(observed) .. ")"
  return hs
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = describe(nil, status.message or "Waiting for the Ready condition")
  return hs
end

local message = describe(ready.reason, ready.message or status.message)

if ready.reason == "Suspended" then
  hs.status = "Suspended"
elseif ready.status == "True" then
  hs.status = "Healthy"
elseif PROGRESSING[ready.reason] then
  hs.status = "Progressing"
elseif DEGRADED[ready.reason] then
  hs.status = "Degraded"
elseif ready.status == "False" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs

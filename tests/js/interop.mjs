// Interop harness: the stock automerge-repo JS client against a Doorstep server.
//
// Spawned by the Rust end-to-end test as `node tests/js/interop.mjs`. The
// protocol with the test is:
//   * inputs come from environment variables (see `readConfig` below);
//   * stdout carries only JSON lines, one object each, with an "event" field:
//       {"event":"member_added","member_id":...,"actor_id":...}
//       {"event":"foreign","result":"unavailable" | "<other: details>"}
//       {"event":"done"}
//     or, on a fatal problem, {"event":"error","stage":...,"message":...}
//     followed by exit code 1;
//   * everything else (diagnostics) goes to stderr;
//   * after the foreign lookup the harness stays connected until its stdin
//     closes (or DOORSTEP_HOLD_MS, default 30 s, pass), then exits 0.
//
// Set DOORSTEP_TRACE=1 to log every frame to stderr, and DEBUG=automerge-repo:*
// for the library's own debug output (also stderr).

import * as Automerge from "@automerge/automerge"
import { Repo, cbor } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

// ---------------------------------------------------------------- output

function emit(obj) {
  // stdout writes to a pipe are synchronous on Linux, so a following
  // process.exit() cannot lose them.
  process.stdout.write(JSON.stringify(obj) + "\n")
}

function log(...args) {
  console.error("[interop]", ...args)
}

let repo // set once constructed, so fail() can shut it down

function fail(stage, err) {
  const message = err instanceof Error ? err.message : String(err)
  log(`FATAL at ${stage}:`, err instanceof Error && err.stack ? err.stack : message)
  emit({ event: "error", stage, message })
  try {
    repo?.shutdown()
  } catch {
    // ignore: we are exiting anyway
  }
  process.exit(1)
}

// The stock Node client re-throws any WebSocket error other than ECONNREFUSED
// from inside its event listener (e.g. "Unexpected server response: 401" when
// the upgrade is refused). That surfaces here as an uncaught exception.
let currentStage = "startup"
process.on("uncaughtException", err => fail(`${currentStage} (uncaught)`, err))
process.on("unhandledRejection", err => fail(`${currentStage} (unhandled rejection)`, err))

// ---------------------------------------------------------------- config

function requireEnv(name) {
  const v = process.env[name]
  if (v === undefined || v === "") fail("config", new Error(`missing environment variable ${name}`))
  return v
}

function intEnv(name, dflt) {
  const v = process.env[name]
  if (v === undefined || v === "") return dflt
  const n = Number.parseInt(v, 10)
  if (!Number.isFinite(n) || n < 0) fail("config", new Error(`${name} must be a non-negative integer, got ${v}`))
  return n
}

function readConfig() {
  const base = requireEnv("DOORSTEP_URL").replace(/\/+$/, "")
  const token = requireEnv("DOORSTEP_TOKEN")
  let wsUrl = process.env.DOORSTEP_WS_URL
  if (!wsUrl) {
    const u = new URL(base)
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      fail("config", new Error(`DOORSTEP_URL must be http(s)://, got ${base}`))
    }
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:"
    u.pathname = "/sync"
    u.search = ""
    u.searchParams.set("token", token)
    wsUrl = u.toString()
  }
  return {
    base,
    token,
    wsUrl,
    rosterUrl: requireEnv("ROSTER_URL"),
    foreignUrl: requireEnv("FOREIGN_URL"),
    memberId: requireEnv("MEMBER_ID"),
    memberName: requireEnv("MEMBER_NAME"),
    connectTimeoutMs: intEnv("DOORSTEP_CONNECT_TIMEOUT_MS", 10_000),
    findTimeoutMs: intEnv("DOORSTEP_FIND_TIMEOUT_MS", 15_000),
    foreignTimeoutMs: intEnv("DOORSTEP_FOREIGN_TIMEOUT_MS", 10_000),
    holdMs: intEnv("DOORSTEP_HOLD_MS", 30_000),
    ackGraceMs: intEnv("DOORSTEP_ACK_GRACE_MS", 5_000),
    trace: process.env.DOORSTEP_TRACE === "1",
  }
}

// ---------------------------------------------------------------- adapter

/** Describe a decoded frame for the stderr trace without dumping binaries. */
function describe(msg) {
  if (!msg || typeof msg !== "object") return String(msg)
  const out = {}
  for (const [k, v] of Object.entries(msg)) {
    out[k] = v instanceof Uint8Array ? `<${v.byteLength} bytes>` : v
  }
  return JSON.stringify(out)
}

/**
 * The stock client adapter, unchanged in behaviour: this subclass only
 * observes frames (for the stderr trace and to surface a server `error`
 * message, which the stock adapter merely logs via `debug`).
 */
class ObservedClientAdapter extends WebSocketClientAdapter {
  constructor(url, { trace, onServerError }) {
    super(url)
    this.trace = trace
    this.onServerError = onServerError
  }

  receiveMessage(messageBytes) {
    try {
      const msg = cbor.decode(new Uint8Array(messageBytes))
      if (this.trace) log("<-", describe(msg))
      if (msg && msg.type === "error") this.onServerError(msg)
    } catch (e) {
      log("<- undecodable frame:", e)
    }
    super.receiveMessage(messageBytes)
  }

  send(message) {
    if (this.trace) log("->", describe(message))
    super.send(message)
  }
}

// ---------------------------------------------------------------- helpers

function withTimeout(promise, ms, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** Resolves when stdin reaches EOF (or errors), or after `ms`. */
function stdinClosedOr(ms) {
  return new Promise(resolve => {
    let settled = false
    const finish = why => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve(why)
    }
    const timer = setTimeout(() => finish("timeout"), ms)
    process.stdin.on("end", () => finish("stdin-eof"))
    process.stdin.on("close", () => finish("stdin-closed"))
    process.stdin.on("error", () => finish("stdin-error"))
    process.stdin.on("data", () => {}) // drain; content is ignored
    process.stdin.resume()
  })
}

// ---------------------------------------------------------------- main

async function main() {
  const cfg = readConfig()
  log(`node ${process.version}; ws endpoint ${cfg.wsUrl.replace(/token=[^&]*/, "token=***")}`)

  // a. Repo with a single WebSocket client adapter and no storage.
  currentStage = "connect"
  let serverPeerId
  const peerSeen = new Promise((resolve, reject) => {
    const adapter = new ObservedClientAdapter(cfg.wsUrl, {
      trace: cfg.trace,
      onServerError: msg =>
        reject(new Error(`server sent error message: ${JSON.stringify(msg.message ?? msg)}`)),
    })
    // Registered before the Repo registers its own listener: this one runs first,
    // but the Repo's (synchronous) handling has finished by the time we resume.
    adapter.on("peer-candidate", ({ peerId, peerMetadata }) => {
      log(`server peer ${peerId} metadata ${JSON.stringify(peerMetadata ?? null)}`)
      serverPeerId = peerId
      resolve(adapter)
    })
    adapter.on("peer-disconnected", ({ peerId }) => log(`peer disconnected: ${peerId}`))
    repo = new Repo({ network: [adapter] })
  })
  // The stock client marks its network "ready" 1 s after connect() even without
  // a `peer` reply, after which find() gives up at once. Waiting for the peer
  // first keeps a slow start-up from turning into a spurious "unavailable".
  await withTimeout(peerSeen, cfg.connectTimeoutMs, "waiting for the server's peer message")
  log(`connected as ${repo.peerId} to server peer ${serverPeerId}`)

  // b. Find the roster and wait until it is ready.
  currentStage = "find_roster"
  const handle = await repo.find(cfg.rosterUrl, { signal: AbortSignal.timeout(cfg.findTimeoutMs) })
  const rosterDoc = handle.doc()
  const roots = ["members", "hardship", "pairings", "teams"]
  const missing = roots.filter(k => typeof rosterDoc[k] !== "object" || rosterDoc[k] === null)
  if (missing.length > 0) {
    fail("find_roster", new Error(`roster lacks root maps: ${missing.join(", ")}; root keys: ${Object.keys(rosterDoc).join(", ")}`))
  }
  log(`roster ${handle.documentId} ready, heads ${JSON.stringify(Automerge.getHeads(rosterDoc))}`)

  // c. No actor registration: the server binds this handle's fresh actor
  // to the device on its first change over the authenticated connection.
  const actorId = Automerge.getActorId(handle.doc())
  log(`actor id ${actorId} (not registered; bound on first use)`)

  // d. Add the member.
  currentStage = "change"
  handle.change(d => {
    d.members[cfg.memberId] = {
      name: cfg.memberName,
      kinds: { no_post: true },
      phone: "13800000000",
    }
  })
  const after = handle.doc()
  const last = Automerge.getLastLocalChange(after)
  if (!last) fail("change", new Error("handle.change produced no local change"))
  const decoded = Automerge.decodeChange(last)
  if (decoded.actor !== actorId) {
    fail("change", new Error(`change authored by actor ${decoded.actor}, but ${actorId} was registered`))
  }
  if (!after.members[cfg.memberId]) fail("change", new Error("member missing after change"))
  const changeHash = decoded.hash
  log(`change ${changeHash} seq ${decoded.seq} by ${decoded.actor}`)

  // Track whether the server has acknowledged our change (its sync state's
  // heads include it). Diagnostic only, plus a bounded grace wait at the end.
  let acked = false
  let ackResolve
  const ackPromise = new Promise(r => (ackResolve = r))
  repo.synchronizer.on("sync-state", ({ peerId, documentId, syncState }) => {
    if (acked || documentId !== handle.documentId || peerId !== serverPeerId) return
    const theirs = [...(syncState.theirHeads ?? []), ...(syncState.sharedHeads ?? [])]
    if (theirs.includes(changeHash)) {
      acked = true
      log("server acknowledged the change (its heads include it)")
      ackResolve()
    }
  })

  // e. Report.
  emit({ event: "member_added", member_id: cfg.memberId, actor_id: actorId })

  // f. Look up a document this device may not access.
  currentStage = "find_foreign"
  let result
  try {
    const foreign = await repo.find(cfg.foreignUrl, { signal: AbortSignal.timeout(cfg.foreignTimeoutMs) })
    result = `other: found (state ${foreign.state}, keys ${JSON.stringify(Object.keys(foreign.doc() ?? {}))})`
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e)
    if (/is unavailable/.test(msg)) {
      result = "unavailable"
    } else if (e?.name === "AbortError" || e?.name === "TimeoutError") {
      result = `other: no answer within ${cfg.foreignTimeoutMs} ms (${e.name})`
    } else {
      result = `other: ${e?.name ?? "Error"}: ${msg}`
    }
    log(`foreign find rejected: ${e?.name}: ${msg}`)
  }
  emit({ event: "foreign", result })

  // g. Stay connected until the test closes stdin (or the hold time passes).
  currentStage = "hold"
  const why = await stdinClosedOr(cfg.holdMs)
  log(`hold ended: ${why}`)
  if (!acked) {
    log(`change not yet acknowledged; waiting up to ${cfg.ackGraceMs} ms`)
    await Promise.race([ackPromise, sleep(cfg.ackGraceMs)])
    if (!acked) log("WARNING: the server never acknowledged the change")
  }

  currentStage = "shutdown"
  await withTimeout(Promise.resolve(repo.shutdown()), 5_000, "repo.shutdown()").catch(e =>
    log(`shutdown: ${e.message}`)
  )
  emit({ event: "done" })
  process.exit(0)
}

main().catch(e => fail(currentStage, e))

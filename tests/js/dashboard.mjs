// Drives the Doorstep dashboard in headless Chromium (Debian's package) with
// playwright-core, and prints what a person would see as one JSON line:
// the rollup table before and after drilling down, the downloaded CSV, the
// health panel, where hostile tenant names ended up, and what the page
// stored and which security headers it got.
//
// Fails (exits non-zero) if any dialog opens, any console error or page
// error occurs (a CSP violation is a console error), or the page reports a
// CSP violation before the deliberate check at the end.
//
// Env: DOORSTEP_URL, DOORSTEP_USER, DOORSTEP_PASSWORD, YEAR, DRILL (the name
// of a row to drill into), OUT_DIR (screenshots and the download go there),
// CHROMIUM (default /usr/bin/chromium), HOSTILE_TOP and HOSTILE_DRILLED
// (optional JSON arrays of tenant names to find as text before and after
// drilling down).

import { readFile } from "node:fs/promises"
import { join } from "node:path"
import { afterLoad, env, fail, launch, watchedPage } from "./lib.mjs"

const names = (name) => JSON.parse(process.env[name] || "[]")

async function readTable(page) {
  return page.$$eval("#rollup tbody tr", (rows) =>
    rows.map((tr) => {
      const cells = Object.fromEntries([...tr.querySelectorAll("td[data-key]")].map((td) => [td.dataset.key, td.textContent]))
      return { tenant: tr.firstChild.textContent, total: tr.classList.contains("total"), ...cells }
    }),
  )
}

// Where each name shows as text, and anything a name could have injected:
// elements the page never makes, `on*` attributes, `javascript:` links.
async function findNames(page, list) {
  return page.evaluate((list) => {
    const count = (selector, name, match = (t) => t === name) =>
      [...document.querySelectorAll(selector)].filter((e) => match(e.textContent)).length
    const found = Object.fromEntries(list.map((name) => [name, {
      table: count("#rollup tbody th[scope=row]", name),
      chart: count("#chart-coverage text", name),
      tooltip: count("#chart-coverage title", name, (t) => t.startsWith(`${name}: `)),
      health: count("#health tbody th[scope=row]", name),
      crumbs: count("#crumbs button, #crumbs span", name),
    }]))
    const injected = []
    for (const e of document.querySelectorAll("img, iframe, object, embed, frame, base, form:not(#login-form):not(#period-form):not(#activate-form):not(#password-form), script:not([src='/dashboard.js'])")) {
      injected.push(e.outerHTML.slice(0, 200))
    }
    if (document.querySelectorAll("svg").length !== 2) injected.push(`${document.querySelectorAll("svg").length} svg elements`)
    for (const e of document.querySelectorAll("*")) {
      for (const a of e.attributes) {
        if (a.name.startsWith("on") || /^\s*javascript:/i.test(a.value)) injected.push(`${e.tagName} ${a.name}=${a.value}`)
      }
    }
    return { found, injected, pwned: window.pwned ?? null }
  }, list)
}

const browser = await launch()
const problems = []
let expectViolation = false
const afterControl = []
try {
  const page = await watchedPage(browser, { acceptDownloads: true, viewport: { width: 1400, height: 1000 } }, problems)
  // After the deliberate violation below, console errors are its report.
  page.on("console", (m) => {
    if (expectViolation && m.type() === "error") afterControl.push(`console error: ${m.text()}`)
  })
  // Playwright's init scripts run whatever the CSP says: a listener for
  // violations, in place before the page's own script.
  await page.addInitScript(() => {
    window.__violations = []
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__violations.push({ directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample }))
  })

  const response = await page.goto(`${env("DOORSTEP_URL")}/dashboard`)
  const headers = response.headers()
  // The style sheet is a file the CSP allows: it applied.
  const styled = await page.evaluate(() => getComputedStyle(document.querySelector("header")).display === "flex")
  await page.fill("#username", env("DOORSTEP_USER"))
  await page.fill("#password", env("DOORSTEP_PASSWORD"))
  const loginResponse = page.waitForResponse((r) => new URL(r.url()).pathname === "/api/v1/login")
  await afterLoad(page, () => page.click("#login-button"))
  const token = (await (await loginResponse).json()).token
  const storage = await page.evaluate(() => ({
    session: Object.entries(sessionStorage),
    local: Object.entries(localStorage),
    cookie: document.cookie,
  }))
  const cookies = await page.context().cookies()
  const stored = JSON.stringify([storage, cookies])
  const tokenStored = Boolean(token) && stored.includes(token)

  await page.selectOption("#period-kind", "year")
  await page.fill("#period-value", env("YEAR"))
  await afterLoad(page, () => page.click("#apply"))
  await page.waitForFunction((year) => (document.querySelector("#table-title").dataset.period || "").startsWith(`${year}-01-01`), env("YEAR"))
  const top = await readTable(page)
  const hostileTop = await findNames(page, names("HOSTILE_TOP"))
  await page.screenshot({ path: join(env("OUT_DIR"), "dashboard.png"), fullPage: true })

  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download-csv")])
  const csvPath = join(env("OUT_DIR"), "download.csv")
  await download.saveAs(csvPath)
  const csv = await readFile(csvPath, "utf8")
  const csvName = download.suggestedFilename()

  const drill = env("DRILL")
  await afterLoad(page, () => page.click(`#rollup tbody tr.drill th button >> text=${drill}`))
  await page.waitForFunction((name) => document.querySelector("#crumbs").textContent.includes(name), drill)
  await page.waitForFunction((name) => document.querySelector("#table-title").textContent.includes(name), drill)
  const drilled = await readTable(page)
  const health = await page.$$eval("#health tbody tr", (rows) => rows.map((tr) => [...tr.children].map((td) => td.textContent)))
  const hostileDrilled = await findNames(page, names("HOSTILE_DRILLED"))
  await page.screenshot({ path: join(env("OUT_DIR"), "drilled.png"), fullPage: true })
  // Give anything injected (an onerror of a broken image) time to fire.
  await page.waitForTimeout(300)
  const violations = await page.evaluate(() => window.__violations)
  for (const v of violations) problems.push(`CSP violation: ${JSON.stringify(v)}`)

  // The control: the CSP is really enforced. An inline script put into the
  // page is refused, and the refusal is reported.
  expectViolation = true
  page.expected.push(/./)
  await page.evaluate(() => {
    const s = document.createElement("script")
    s.textContent = "window.__inlineRan = true"
    document.body.append(s)
  })
  await page.waitForFunction(() => window.__violations.length > 0, null, { timeout: 5000 }).catch(() => {})
  const control = await page.evaluate(() => ({ ran: window.__inlineRan === true, violations: window.__violations }))

  // A month that is not one: said in Chinese (and English) at once, and
  // the previous period's figures leave the screen.
  await page.selectOption("#period-kind", "month")
  await page.fill("#period-value", "2026-13")
  await page.click("#apply")
  await page.waitForFunction(() => document.querySelector("#status").textContent !== "")
  const wrongMonth = await page.evaluate(() => ({
    status: document.querySelector("#status").textContent,
    rows: document.querySelectorAll("#rollup tbody tr").length,
    healthRows: document.querySelectorAll("#health tbody tr").length,
    bars: document.querySelectorAll("#chart-months rect, #chart-coverage rect").length,
  }))

  // The token lived in memory only: a reload is logged out.
  await page.reload()
  await page.waitForSelector("#login", { state: "visible" })
  const loggedOutOnReload = await page.evaluate(() => document.querySelector("#app").hidden)

  fail(problems)
  process.stdout.write(JSON.stringify({
    top, csv, csvName, drilled, health, hostileTop, hostileDrilled, headers, tokenStored,
    storageEntries: storage.session.length + storage.local.length, cookies: cookies.length,
    control: { ...control, consoleErrors: afterControl }, loggedOutOnReload, styled, wrongMonth,
  }) + "\n")
} finally {
  await browser.close()
}

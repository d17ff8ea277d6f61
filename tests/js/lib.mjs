// What the dashboard drivers share: Debian's Chromium launched headless
// with playwright-core, a page that records every dialog, console error and
// page error as a problem, logging in, and waiting for a load to finish.

import { chromium } from "playwright-core"

export const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`missing ${name}`)
  return value
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  })
}

// A page whose misbehaviour lands in `problems`. A console error the
// caller expects (a refusal it provoked) is matched by a pattern it puts in
// `page.expected` for the while.
export async function watchedPage(browser, options, problems) {
  const page = await browser.newPage(options)
  page.expected = []
  page.on("console", (m) => {
    console.error("[page]", m.type(), m.text())
    if (m.type() === "error" && !page.expected.some((p) => p.test(m.text()))) problems.push(`console error: ${m.text()}`)
  })
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`))
  page.on("dialog", async (d) => {
    problems.push(`a ${d.type()} dialog opened: ${d.message()}`)
    await d.dismiss().catch(() => {})
  })
  return page
}

// Runs `action` and waits until the page has finished the load it starts
// (table, comparisons, charts and health panel all rendered).
export async function afterLoad(page, action, counter = "loads") {
  const before = await page.evaluate((c) => Number(document.body.dataset[c] || 0), counter)
  await action()
  await page.waitForFunction(([c, n]) => Number(document.body.dataset[c] || 0) > n, [counter, before])
}

export async function logIn(page, url, user, password) {
  await page.goto(`${url}/dashboard`)
  await page.fill("#username", user)
  await page.fill("#password", password)
  await afterLoad(page, () => page.click("#login-button"))
}

// Shows the period `kind` = `value` (and the holiday, for a campaign).
export async function showPeriod(page, kind, value, holiday) {
  await page.selectOption("#period-kind", kind)
  if (holiday) await page.selectOption("#period-holiday", holiday)
  await page.fill("#period-value", value)
  await afterLoad(page, () => page.click("#apply"))
}

export function fail(problems) {
  if (problems.length) throw new Error(`the dashboard misbehaved:\n${problems.join("\n")}`)
}

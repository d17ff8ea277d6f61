// Drives the Doorstep dashboard in headless Chromium (Debian's package) with
// playwright-core, and prints what a person would see as one JSON line:
// the rollup table before and after drilling down, and the downloaded CSV.
//
// Env: DOORSTEP_URL, DOORSTEP_USER, DOORSTEP_PASSWORD, YEAR, DRILL (the name
// of a row to drill into), OUT_DIR (screenshots and the download go there),
// CHROMIUM (default /usr/bin/chromium).

import { readFile } from "node:fs/promises"
import { join } from "node:path"
import { chromium } from "playwright-core"

const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`missing ${name}`)
  return value
}

// Runs `action` and waits until the page has finished the load it starts
// (table, charts and health panel all rendered).
async function afterLoad(page, action) {
  const before = await page.evaluate(() => Number(document.body.dataset.loads || 0))
  await action()
  await page.waitForFunction((n) => Number(document.body.dataset.loads || 0) > n, before)
}

async function readTable(page) {
  return page.$$eval("#rollup tbody tr", (rows) =>
    rows.map((tr) => {
      const cells = Object.fromEntries([...tr.querySelectorAll("td[data-key]")].map((td) => [td.dataset.key, td.textContent]))
      return { tenant: tr.firstChild.textContent, total: tr.classList.contains("total"), ...cells }
    }),
  )
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
})
try {
  const page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1400, height: 1000 } })
  page.on("console", (m) => console.error("[page]", m.text()))
  await page.goto(`${env("DOORSTEP_URL")}/dashboard`)
  await page.fill("#username", env("DOORSTEP_USER"))
  await page.fill("#password", env("DOORSTEP_PASSWORD"))
  await afterLoad(page, () => page.click("#login-button"))

  await page.selectOption("#period-kind", "year")
  await page.fill("#period-value", env("YEAR"))
  await afterLoad(page, () => page.click("#apply"))
  await page.waitForFunction((year) => document.querySelector("#table-title").textContent.includes(`${year}-01-01`), env("YEAR"))
  const top = await readTable(page)
  await page.screenshot({ path: join(env("OUT_DIR"), "dashboard.png"), fullPage: true })

  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download-csv")])
  const csvPath = join(env("OUT_DIR"), "download.csv")
  await download.saveAs(csvPath)
  const csv = await readFile(csvPath, "utf8")

  const drill = env("DRILL")
  await afterLoad(page, () => page.click(`#rollup tbody tr.drill td:first-child >> text=${drill}`))
  await page.waitForFunction((name) => document.querySelector("#crumbs").textContent.includes(name), drill)
  await page.waitForFunction((name) => document.querySelector("#table-title").textContent.includes(name), drill)
  const drilled = await readTable(page)
  const health = await page.$$eval("#health tbody tr", (rows) => rows.map((tr) => [...tr.children].map((td) => td.textContent)))
  await page.screenshot({ path: join(env("OUT_DIR"), "drilled.png"), fullPage: true })
  process.stdout.write(JSON.stringify({ top, csv, drilled, health }) + "\n")
} finally {
  await browser.close()
}

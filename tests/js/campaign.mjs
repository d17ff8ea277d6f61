// The demo year's Spring Festival campaign in the dashboard: prints one
// JSON line with the period shown, the visits per month of the chart, and
// the comparison table's figures (this period, the previous period and a
// year earlier), read from the page.
//
// Env: DOORSTEP_URL, DOORSTEP_USER, DOORSTEP_PASSWORD, YEAR, CHROMIUM.

import { env, fail, launch, logIn, showPeriod, watchedPage } from "./lib.mjs"

const browser = await launch()
const problems = []
try {
  const page = await watchedPage(browser, { viewport: { width: 1280, height: 800 } }, problems)
  await logIn(page, env("DOORSTEP_URL"), env("DOORSTEP_USER"), env("DOORSTEP_PASSWORD"))
  await showPeriod(page, "campaign", env("YEAR"), "spring-festival")
  const seen = await page.evaluate(() => {
    const compare = {}
    for (const td of document.querySelectorAll("#compare tbody td[data-which]")) {
      compare[td.dataset.key] ??= {}
      compare[td.dataset.key][td.dataset.which] = td.dataset.value === undefined ? null : Number(td.dataset.value)
    }
    return {
      period: document.querySelector("#table-title").dataset.period,
      title: document.querySelector("#table-title").textContent,
      headings: [...document.querySelectorAll("#compare thead th")].map((th) => th.textContent),
      months: [...document.querySelectorAll("#chart-months rect")].map((r) => [r.dataset.month, Number(r.dataset.visits)]),
      compare,
    }
  })
  fail(problems)
  process.stdout.write(JSON.stringify(seen) + "\n")
} finally {
  await browser.close()
}

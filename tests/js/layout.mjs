// The dashboard as an office sees it on three screens, in both languages,
// downloaded and printed. Prints one JSON line of what it measured:
// - per viewport and view (the district, and the sub-district DRILL with
//   its many branches) and per column group: elements that overflow the
//   viewport horizontally, the group's columns and whether each is on
//   screen, chart labels whose boxes intersect, and each coverage bar's
//   length as a share of the 0–100% axis (measured from the drawn axis);
// - the visible labels in Chinese and in English, pairwise;
// - the CSV's file name and heading line in each language;
// - where the printed PDF was written (OUT_DIR/report.pdf).
//
// Env: DOORSTEP_URL, DOORSTEP_USER, DOORSTEP_PASSWORD, YEAR, DRILL, OUT_DIR,
// CHROMIUM.

import { readFile } from "node:fs/promises"
import { join } from "node:path"
import { afterLoad, env, fail, launch, logIn, showPeriod, watchedPage } from "./lib.mjs"

const VIEWPORTS = [[1280, 800], [1920, 1080], [390, 844]]

// Everything drawn that sticks out of the viewport on either side.
const overflowing = () => {
  const width = document.documentElement.clientWidth
  const out = []
  for (const e of document.querySelectorAll("body *")) {
    // Not drawn: hidden, or inside a closed <details>.
    if (!e.checkVisibility()) continue
    const r = e.getBoundingClientRect()
    if (r.width === 0 && r.height === 0) continue
    if (r.left < -0.5 || r.right > width + 0.5) {
      out.push(`${e.tagName.toLowerCase()}#${e.id}.${e.getAttribute("class") || ""} ${Math.round(r.left)}..${Math.round(r.right)} of ${width}: ${e.textContent.slice(0, 40)}`)
    }
  }
  if (document.documentElement.scrollWidth > width) out.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} > ${width}`)
  return out
}

// The group's columns (the first row's cells, by key) and whether each is
// drawn inside the viewport.
const groupColumns = () => {
  const width = document.documentElement.clientWidth
  const row = document.querySelector("#rollup tbody tr")
  return [...row.querySelectorAll("td[data-key]")].map((td) => {
    const r = td.getBoundingClientRect()
    return { key: td.dataset.key, shown: r.width > 0 && r.left >= 0 && r.right <= width + 0.5 }
  })
}

// Pairs of labels in one chart whose boxes intersect.
const chartCollisions = () => {
  const out = []
  for (const svg of document.querySelectorAll("svg")) {
    const boxes = [...svg.querySelectorAll("text")].map((t) => ({ text: t.textContent, r: t.getBoundingClientRect() }))
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i].r, b = boxes[j].r
        if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) {
          out.push(`${svg.id}: "${boxes[i].text}" and "${boxes[j].text}"`)
        }
      }
    }
  }
  return out
}

// Each coverage bar's drawn length over the drawn distance from 0% to 100%.
const coverageBars = () => {
  const svg = document.querySelector("#chart-coverage")
  const lines = [...svg.querySelectorAll("line")]
  const zero = lines.find((l) => l.classList.contains("grid")).getBoundingClientRect().left
  const full = svg.querySelector("line.reference").getBoundingClientRect().left
  return [...svg.querySelectorAll("rect")].map((rect) => ({
    tenant: rect.dataset.tenant,
    share: rect.getBoundingClientRect().width / (full - zero),
    starts: Math.abs(rect.getBoundingClientRect().left - zero) < 1,
  }))
}

// Every visible piece of wording: headings, labels, buttons, options,
// column headings, definitions, chart legends and axis titles.
const labels = () =>
  [...document.querySelectorAll("h1, h2, h3, label, button, summary, option, thead th, .when, dt, .hint, #who, #chart-months text[class^=legend], #chart-coverage text.axis-title")]
    .filter((e) => e.getClientRects().length > 0 || e.tagName === "OPTION")
    // Units' names are data, not wording.
    .filter((e) => !e.closest("tbody, #crumbs"))
    .map((e) => `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ""}|${e.textContent.trim()}`)

// The comparison table's figures: {key: {current, previous, year_earlier}}.
const compared = () => {
  const out = {}
  for (const td of document.querySelectorAll("#compare tbody td[data-which]")) {
    out[td.dataset.key] ??= {}
    out[td.dataset.key][td.dataset.which] = td.dataset.value === undefined ? null : Number(td.dataset.value)
  }
  return out
}

// Presses Tab until `selector` has the focus (at most `limit` times) and
// says how many it took, or -1.
async function tabTo(page, selector, limit = 60) {
  for (let n = 1; n <= limit; n++) {
    await page.keyboard.press("Tab")
    if (await page.evaluate((s) => document.activeElement?.matches(s) ?? false, selector)) return n
  }
  return -1
}

// A new viewport, once the charts have been drawn again to its width.
async function resize(page, width, height) {
  if (page.viewportSize().width === width) return
  const drawn = await page.evaluate(() => Number(document.body.dataset.charts || 0))
  await page.setViewportSize({ width, height })
  await page.waitForFunction((n) => Number(document.body.dataset.charts || 0) > n, drawn)
}

const browser = await launch()
const problems = []
try {
  const page = await watchedPage(browser, { acceptDownloads: true, viewport: { width: 1280, height: 800 } }, problems)
  await logIn(page, env("DOORSTEP_URL"), env("DOORSTEP_USER"), env("DOORSTEP_PASSWORD"))
  await showPeriod(page, "year", env("YEAR"))

  const screens = []
  for (const [width, height] of VIEWPORTS) {
    await resize(page, width, height)
    for (const view of ["district", "drilled"]) {
      if (view === "drilled") {
        await afterLoad(page, () => page.click(`#rollup tbody tr.drill th button >> text=${env("DRILL")}`))
      }
      const groups = {}
      for (const group of ["visits", "hardship", "training", "teams"]) {
        await page.click(`#groups button[data-group=${group}]`)
        groups[group] = { overflow: await page.evaluate(overflowing), columns: await page.evaluate(groupColumns) }
      }
      screens.push({
        width, view, groups,
        compare: await page.evaluate(compared),
        collisions: await page.evaluate(chartCollisions),
        coverage: await page.evaluate(coverageBars),
        overflow: await page.evaluate(overflowing),
      })
      await page.screenshot({ path: join(env("OUT_DIR"), `${view}-${width}.png`), fullPage: true })
      if (view === "drilled") await afterLoad(page, () => page.click("#crumbs button"))
    }
  }
  await resize(page, 1280, 800)
  await page.click("#groups button[data-group=visits]")

  // A branch's page, reached with the keyboard alone: its figures and
  // health as counts; names refused without a drill-down grant.
  await afterLoad(page, () => page.click(`#rollup tbody tr.drill th button >> text=${env("DRILL")}`))
  await page.focus("#apply")
  const tabsToBranch = await tabTo(page, "#rollup tbody tr.branch th button")
  await afterLoad(page, () => page.keyboard.press("Enter"), "branchLoads")
  const branchPage = await page.evaluate(() => ({
    title: document.querySelector("#branch-title").textContent,
    focused: document.activeElement.id,
    figures: Object.fromEntries([...document.querySelectorAll("#branch-figures dd")].map((dd) => [dd.dataset.key, dd.textContent])),
    health: Object.fromEntries([...document.querySelectorAll("#branch-health dd")].map((dd) => [dd.dataset.key, dd.textContent])),
  }))
  branchPage.tabsToBranch = tabsToBranch
  branchPage.tabsToNames = await tabTo(page, "#branch-names")
  // The refusal the browser logs is the one provoked here.
  page.expected.push(/status of 403/)
  await page.keyboard.press("Enter")
  await page.waitForFunction(() => document.querySelector("#branch-names-status").textContent !== "")
  page.expected.pop()
  branchPage.namesStatus = await page.textContent("#branch-names-status")
  branchPage.namesListed = await page.evaluate(() => document.querySelectorAll("#branch-names-list li").length)
  await page.keyboard.press("Shift+Tab")
  branchPage.backFocused = await page.evaluate(() => document.activeElement.id)
  await page.keyboard.press("Enter")
  branchPage.backTo = await page.evaluate(() => document.activeElement.textContent)
  await afterLoad(page, () => page.click("#crumbs button"))

  const download = async () => {
    const [file] = await Promise.all([page.waitForEvent("download"), page.click("#download-csv")])
    const path = join(env("OUT_DIR"), file.suggestedFilename())
    await file.saveAs(path)
    return { name: file.suggestedFilename(), body: await readFile(path, "utf8") }
  }
  const zh = { labels: await page.evaluate(labels), csv: await download() }
  // The report an office files, printed as Chromium prints it.
  await page.pdf({ path: join(env("OUT_DIR"), "report.pdf"), preferCSSPageSize: true, printBackground: true })
  const renders = await page.evaluate(() => Number(document.body.dataset.renders || 0))
  await page.click("#lang")
  await page.waitForFunction((n) => Number(document.body.dataset.renders || 0) > n, renders)
  const en = { labels: await page.evaluate(labels), csv: await download(), lang: await page.evaluate(() => document.documentElement.lang) }
  // The campaign period's name reaches the file name too.
  await showPeriod(page, "campaign", env("YEAR"), "spring-festival")
  const campaignCsv = await download()

  fail(problems)
  process.stdout.write(JSON.stringify({ screens, zh, en, campaignCsv, branchPage }) + "\n")
} finally {
  await browser.close()
}

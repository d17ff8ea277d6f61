// Drives the dashboard's onboarding pages in headless Chromium (Debian's
// package) with playwright-core, as an invited official would: open the
// invitation link, set a password (a mismatched confirmation first), land
// logged in, change the password, log out and log in with the new one.
// Prints what the person saw as one JSON line.
//
// Fails (exits non-zero) if any dialog opens, or any console error or page
// error occurs (a CSP violation is a console error).
//
// Env: DOORSTEP_URL, CODE (the activation code), USERNAME (the invited
// username), PASSWORD, NEW_PASSWORD, CHROMIUM (default /usr/bin/chromium).

import { env, fail, launch, watchedPage } from "./lib.mjs"

const text = (page, selector) => page.$eval(selector, (e) => e.textContent)
const visible = (page, selector) => page.$eval(selector, (e) => !e.closest("[hidden]"))

const browser = await launch()
const problems = []
try {
  // A refused request would log a console error; the mismatch below sends none.
  const page = await watchedPage(browser, { viewport: { width: 1280, height: 800 } }, problems)

  // The invitation link: the code after `#`, which no server sees.
  await page.goto(`${env("DOORSTEP_URL")}/dashboard#activate=${encodeURIComponent(env("CODE"))}`)
  await page.waitForSelector("#activate", { state: "visible" })
  const prefilled = (await page.inputValue("#activate-code")) === env("CODE")
  const urlAfter = page.url()

  // Two passwords that differ: said at once, nothing sent.
  let activations = 0
  page.on("request", (r) => { if (new URL(r.url()).pathname === "/api/v1/activate") activations += 1 })
  await page.fill("#activate-username", env("USERNAME"))
  await page.fill("#activate-password", env("PASSWORD"))
  await page.fill("#activate-confirm", `${env("PASSWORD")}x`)
  await page.click("#activate-button")
  await page.waitForFunction(() => document.querySelector("#activate-error").textContent !== "")
  const mismatch = await text(page, "#activate-error")
  const sentOnMismatch = activations
  const clearedOnMismatch = (await page.inputValue("#activate-password")) === ""

  await page.fill("#activate-password", env("PASSWORD"))
  await page.fill("#activate-confirm", env("PASSWORD"))
  await page.click("#activate-button")
  await page.waitForSelector("#app", { state: "visible" })
  const who = await text(page, "#who")

  // Change the password through the form.
  await page.click("#change-password-open")
  await page.waitForSelector("#change-password", { state: "visible" })
  await page.fill("#current-password", env("PASSWORD"))
  await page.fill("#new-password", env("NEW_PASSWORD"))
  await page.fill("#new-password-confirm", env("NEW_PASSWORD"))
  await page.click("#password-button")
  await page.waitForSelector("#app", { state: "visible" })
  const changed = await text(page, "#status")

  // Typed into the change-password form and cancelled, then out: the next
  // person at this PC finds every secret field empty.
  await page.click("#change-password-open")
  await page.fill("#current-password", env("NEW_PASSWORD"))
  await page.fill("#new-password", "typed and abandoned")
  await page.click("#password-cancel")
  await page.click("#logout")
  await page.waitForSelector("#login", { state: "visible" })
  const leftBehind = await page.$$eval("input[type=password], #activate-code", (inputs) =>
    inputs.filter((i) => i.value !== "").map((i) => i.id))
  // An invitation link followed while somebody is logged in changes nothing.
  await page.fill("#username", env("USERNAME"))
  await page.fill("#password", env("NEW_PASSWORD"))
  await page.click("#login-button")
  await page.waitForSelector("#app", { state: "visible" })
  const relogged = await text(page, "#who")
  await page.evaluate(() => { location.hash = "activate=SOMEONE-ELSES" })
  await page.waitForFunction(() => location.hash === "")
  const activateHidden = !(await visible(page, "#activate")) && (await visible(page, "#app"))

  fail(problems)
  process.stdout.write(JSON.stringify({
    prefilled, urlAfter, mismatch, sentOnMismatch, clearedOnMismatch, activations, who, changed, leftBehind,
    relogged, activateHidden,
  }) + "\n")
} finally {
  await browser.close()
}

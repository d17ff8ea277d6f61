// The officials' dashboard: one static page over the JSON API.
//
// Safe by construction: everything that comes from the server (tenant names
// above all, which a sub-district admin chooses) reaches the page only as
// text nodes (`textContent`, `append(string)`) or as numeric SVG
// attributes. Nothing here parses HTML: no HTML-string setters or writers
// of any kind (the e2e test greps this file for them). The page's
// Content-Security-Policy (script-src 'self', no inline script or style)
// backs this up.
//
// Figures only: this page never asks for names. The session token lives in
// this script's memory and nowhere else (no sessionStorage, localStorage or
// cookie), so a reload logs out.
"use strict";

(() => {
  const COLUMNS = [
    ["visits", "走访次数"], ["households_visited", "走访户数"], ["aid_total_fen", "帮扶金额(元)", "yuan"],
    ["hardship_registered", "在册困难党员"], ["hardship_new", "新增"], ["hardship_closed", "销号"],
    ["hardship_visited_pct", "走访覆盖%"], ["follow_ups_overdue", "逾期跟进"],
    ["migrants_contacted_30d", "流动党员30天联系"], ["trainings", "培训场次"], ["training_attendance", "培训人次"],
    ["placements", "再就业"], ["fund_donations_fen", "募集(元)", "yuan"], ["fund_payments_fen", "支出(元)", "yuan"],
    ["teams", "队伍数"], ["team_categories", "类别"], ["team_members", "队伍中党员"],
    ["team_member_pct", "党员占比%"], ["team_backbone_pct", "骨干占比%"], ["volunteer_hours", "志愿时长"],
  ];
  const HEALTH = ["devices", "devices_stale", "open_conflicts", "invalid_records", "future_visits"];
  const SVG = "http://www.w3.org/2000/svg";
  // In memory only.
  const state = { token: null, trail: [] };
  const $ = (id) => document.getElementById(id);

  // An element with `attrs` set by setAttribute (callers pass only fixed
  // attribute names: class, data-*, and numbers or fixed words for SVG
  // geometry) and `children` appended as text nodes or elements.
  function el(tag, attrs = {}, ...children) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    node.append(...children.map((c) => (c instanceof Node ? c : String(c ?? ""))));
    return node;
  }

  function fmt(value, kind) {
    if (kind === "yuan") return (value / 100).toLocaleString("zh-CN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return typeof value === "number" ? value.toLocaleString("zh-CN") : String(value ?? "");
  }

  async function api(path) {
    const response = await fetch(path, { headers: { authorization: `Bearer ${state.token}` } });
    if (response.status === 401) { showLogin(); throw new Error("请重新登录 (session expired)"); }
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.statusText);
    return response;
  }

  function periodQuery() {
    const kind = $("period-kind").value, value = $("period-value").value.trim();
    if (kind === "range") return `from=${encodeURIComponent(value)}&to=${encodeURIComponent($("period-to").value)}`;
    return `${kind}=${encodeURIComponent(value)}`;
  }

  function tenantQuery() {
    const last = state.trail[state.trail.length - 1];
    return last ? `&tenant=${encodeURIComponent(last.id)}` : "";
  }

  function renderTable(rollup) {
    $("rollup").querySelector("thead").replaceChildren(
      el("tr", {}, el("th", {}, "单位 Unit"), ...COLUMNS.map(([, label]) => el("th", {}, label))),
    );
    const row = (r, cls) => {
      const tr = el("tr", cls ? { class: cls } : {}, el("td", {}, r.tenant),
        ...COLUMNS.map(([key, , kind]) => el("td", { "data-key": key }, fmt(r[key], kind))));
      tr.dataset.tenant = r.tenant_id;
      return tr;
    };
    const rows = rollup.rows.map((r) => {
      const tr = row(r, r.level === "branch" ? "" : "drill");
      if (r.level !== "branch") tr.firstChild.addEventListener("click", () => { state.trail.push({ id: r.tenant_id, name: r.tenant }); load(); });
      return tr;
    });
    $("rollup").querySelector("tbody").replaceChildren(...rows, row(rollup.total, "total"));
    $("table-title").textContent = `汇总 Rollup · ${rollup.tenant} · ${rollup.period.from} — ${rollup.period.to}`;
  }

  function renderCrumbs(rollup) {
    const top = el("a", {}, state.trail.length ? "全区 Top" : rollup.tenant);
    top.addEventListener("click", () => { state.trail = []; load(); });
    const steps = state.trail.flatMap((step, i) => {
      const a = el("a", {}, step.name);
      a.addEventListener("click", () => { state.trail = state.trail.slice(0, i + 1); load(); });
      return [" › ", a];
    });
    $("crumbs").replaceChildren(top, ...steps);
  }

  // Bars sized by `valueOf`, named below by `labelOf`, captioned above by `captionOf`.
  function bars(svg, items, valueOf, labelOf, captionOf) {
    const width = svg.clientWidth || 480, height = 220, pad = 24;
    const max = Math.max(1, ...items.map((item) => Number(valueOf(item)) || 0));
    const w = items.length ? (width - pad) / items.length : 0;
    svg.replaceChildren(...items.flatMap((item, i) => {
      const h = ((Number(valueOf(item)) || 0) / max) * (height - 2 * pad);
      const x = pad / 2 + i * w, y = height - pad - h;
      const label = String(labelOf(item)), caption = String(captionOf(item));
      return [
        el("svg:rect", { x: x + 2, y, width: Math.max(1, w - 4), height: h, fill: "#3d6fb6" },
          el("svg:title", {}, `${label}: ${caption}`)),
        el("svg:text", { x: x + w / 2, y: height - 8, "text-anchor": "middle" }, label),
        el("svg:text", { x: x + w / 2, y: y - 3, "text-anchor": "middle" }, caption),
      ];
    }));
  }

  // What is wrong with the period typed, in both languages, or "".
  function periodProblem() {
    const kind = $("period-kind").value, value = $("period-value").value.trim();
    const forms = {
      year: [/^\d{4}$/, "年份应为四位数字，如 2026 (a year is four digits, as in 2026)"],
      quarter: [/^\d{4}-Q[1-4]$/, "季度应为 YYYY-Qn，如 2026-Q4 (a quarter is YYYY-Qn, as in 2026-Q4)"],
      month: [/^\d{4}-(0[1-9]|1[0-2])$/, "月份应为 YYYY-MM，如 2026-11 (a month is YYYY-MM, as in 2026-11)"],
    };
    if (kind === "range") {
      return value && $("period-to").value ? "" : "请选择起止日期 (choose both dates of the range)";
    }
    const [pattern, problem] = forms[kind];
    return pattern.test(value) ? "" : problem;
  }

  // Nothing of an earlier period stays on screen under an error about
  // another: the table, the charts and the health panel are emptied.
  function clearFigures() {
    $("rollup").querySelector("tbody").replaceChildren();
    $("table-title").textContent = "汇总 Rollup · —";
    $("chart-months").replaceChildren();
    $("chart-coverage").replaceChildren();
    $("health").querySelector("tbody").replaceChildren();
  }

  async function load() {
    $("status").textContent = "";
    const problem = periodProblem();
    if (problem) {
      clearFigures();
      $("status").textContent = problem;
      return;
    }
    try {
      const rollup = await (await api(`/api/v1/rollups?${periodQuery()}${tenantQuery()}`)).json();
      renderTable(rollup);
      renderCrumbs(rollup);
      const months = await (await api(`/api/v1/rollups/breakdown?by=visits_by_month&${periodQuery()}${tenantQuery()}`)).json();
      const perMonth = new Map();
      for (const m of months) {
        if (!perMonth.has(m.category)) perMonth.set(m.category, { month: String(m.category), visits: 0, aid: 0 });
        const entry = perMonth.get(m.category);
        entry.visits += m.count;
        entry.aid += m.amount;
      }
      bars($("chart-months"), [...perMonth.values()].sort((a, b) => a.month.localeCompare(b.month)), (m) => m.visits, (m) => m.month.slice(5),
        (m) => `${m.visits} · ¥${Math.round(m.aid / 100).toLocaleString("zh-CN")}`);
      bars($("chart-coverage"), rollup.rows, (r) => r.hardship_visited_pct, (r) => r.tenant, (r) => `${r.hardship_visited_pct}%`);
      const health = await (await api(`/api/v1/health?${tenantQuery().slice(1)}`)).json();
      $("health").querySelector("tbody").replaceChildren(
        ...health.map((h) => el("tr", {}, el("td", {}, h.tenant), ...HEALTH.map((key) => el("td", {}, h[key])))),
      );
      // Everything on the page now shows this load: tests (and people) can rely on it.
      document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
    } catch (e) {
      clearFigures();
      $("status").textContent = `查询失败 (the figures could not be read): ${e.message}`;
    }
  }

  async function downloadCsv() {
    try {
      const blob = await (await api(`/api/v1/rollups?${periodQuery()}${tenantQuery()}&format=csv`)).blob();
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: `rollup-${$("period-value").value || "period"}.csv` });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (e) {
      $("status").textContent = e.message;
    }
  }

  const PASSWORDS = ["activate-password", "activate-confirm", "current-password", "new-password", "new-password-confirm"];

  // Typed secrets do not outlive the form they were typed for: on a shared
  // office PC the next person must find every field empty.
  function clearSecrets({ code = true } = {}) {
    for (const id of PASSWORDS) $(id).value = "";
    if (code) $("activate-code").value = "";
  }

  // One of the screens before login: "login" or "activate".
  function showLogin(screen = "login") {
    clearSecrets();
    state.token = null;
    state.trail = [];
    $("who").textContent = "";
    $("logout").hidden = true;
    $("change-password-open").hidden = true;
    $("change-password").hidden = true;
    $("app").hidden = true;
    $("login").hidden = screen !== "login";
    $("activate").hidden = screen !== "activate";
  }

  // The server's own words for a refusal, or the status line.
  async function refusal(response) {
    if (!response) return "无法连接服务器 (the server cannot be reached)";
    if (response.status === 429) return "尝试次数过多，请稍后再试 (too many attempts, try later)";
    return (await response.json().catch(() => ({}))).error || response.statusText;
  }

  async function logIn(username, password) {
    const response = await fetch("/api/v1/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username, password }),
    }).catch(() => null);
    if (!response || !response.ok) return false;
    state.token = (await response.json()).token;
    return true;
  }

  // An invitation link may carry its code after the page's `#`
  // (`/dashboard#activate=CODE`): the part after `#` never reaches a
  // server or its logs, and it leaves the address bar at once. A link
  // followed while somebody is logged in changes nothing.
  function route() {
    const hash = location.hash.slice(1);
    if (!hash.startsWith("activate")) return;
    history.replaceState(null, "", location.pathname);
    if (state.token) return;
    let code = "";
    try {
      code = hash.startsWith("activate=") ? decodeURIComponent(hash.slice("activate=".length)) : "";
    } catch {
      code = "";
    }
    showLogin("activate");
    $("activate-code").value = code;
  }

  $("activate-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("activate-error").textContent = "";
    $("activate-status").textContent = "";
    const password = $("activate-password").value;
    if (password !== $("activate-confirm").value) {
      clearSecrets({ code: false });
      $("activate-error").textContent = "两次输入的密码不一致 (the two passwords differ)";
      return;
    }
    const response = await fetch("/api/v1/activate", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ code: $("activate-code").value.trim(), username: $("activate-username").value.trim(), password }),
    }).catch(() => null);
    clearSecrets({ code: false });
    if (response && response.status === 202) {
      $("activate-status").textContent = "等待支部书记批准；批准后请用批准人交给您的邀请码激活 (waiting for the branch secretary's approval; once approved, activate with the code the approver gives you)";
      return;
    }
    if (!response || !response.ok) {
      $("activate-error").textContent = await refusal(response);
      return;
    }
    const { user } = await response.json();
    $("activate-code").value = "";
    if (await logIn(user.username, password)) return start();
    showLogin();
    $("username").value = user.username;
    $("login-error").textContent = "账户已激活，请登录 (activated: log in)";
  });

  $("password-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("password-error").textContent = "";
    $("password-status").textContent = "";
    const next = $("new-password").value;
    if (next !== $("new-password-confirm").value) {
      clearSecrets({ code: false });
      $("password-error").textContent = "两次输入的新密码不一致 (the two new passwords differ)";
      return;
    }
    const response = await fetch("/api/v1/me/password", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${state.token}` },
      body: JSON.stringify({ current: $("current-password").value, new: next }),
    }).catch(() => null);
    clearSecrets({ code: false });
    if (response && response.status === 401 && state.token) {
      // The session ended meanwhile (a wrong current password is 403):
      // log in again.
      const why = await refusal(response);
      showLogin();
      $("login-error").textContent = why;
      return;
    }
    if (!response || !response.ok) {
      $("password-error").textContent = await refusal(response);
      return;
    }
    const { ended_sessions: ended } = await response.json();
    $("change-password").hidden = true;
    $("app").hidden = false;
    $("status").textContent = `密码已修改；其他 ${ended} 个会话已退出 (password changed; ${ended} other sessions ended)`;
  });

  async function logout() {
    const token = state.token;
    showLogin();
    if (token) await fetch("/api/v1/logout", { method: "POST", headers: { authorization: `Bearer ${token}` } }).catch(() => {});
  }

  async function start() {
    const me = await api("/api/v1/me").then((r) => r.json()).catch(() => null);
    if (!me) return showLogin();
    $("who").textContent = `${me.username} · ${me.role}`;
    $("logout").hidden = false;
    $("change-password-open").hidden = false;
    $("change-username").value = me.username;
    $("login").hidden = true;
    $("activate").hidden = true;
    $("app").hidden = false;
    $("period-value").value = String(new Date().getFullYear());
    load();
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    const response = await fetch("/api/v1/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    }).catch(() => null);
    if (!response || !response.ok) {
      $("login-error").textContent = response && response.status === 429 ? "尝试次数过多，请稍后再试 (too many attempts, try later)" : "用户名或密码错误 (wrong username or password)";
      return;
    }
    state.token = (await response.json()).token;
    $("password").value = "";
    start();
  });
  $("to-activate").addEventListener("click", (event) => { event.preventDefault(); showLogin("activate"); $("activate-code").focus(); });
  $("to-login").addEventListener("click", (event) => { event.preventDefault(); showLogin(); $("username").focus(); });
  $("change-password-open").addEventListener("click", () => {
    $("password-status").textContent = "";
    $("change-password").hidden = false;
    $("app").hidden = true;
    $("current-password").focus();
  });
  $("password-cancel").addEventListener("click", () => {
    clearSecrets({ code: false });
    $("password-error").textContent = "";
    $("change-password").hidden = true;
    $("app").hidden = false;
  });
  window.addEventListener("hashchange", route);
  $("period-kind").addEventListener("change", () => {
    const kind = $("period-kind").value, now = new Date();
    $("period-to").hidden = kind !== "range";
    $("period-value").type = kind === "range" ? "date" : "text";
    $("period-value").value = { year: `${now.getFullYear()}`, quarter: `${now.getFullYear()}-Q${Math.floor(now.getMonth() / 3) + 1}`,
      month: `${now.getFullYear()}-${String(now.getMonth() + 1).padStart(2, "0")}`, range: "" }[kind];
  });
  $("period-form").addEventListener("submit", (event) => { event.preventDefault(); load(); });
  $("download-csv").addEventListener("click", downloadCsv);
  $("logout").addEventListener("click", logout);
  route();
})();

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
// Figures only: this page asks for names only on a branch page, when the
// official presses "names", and the server answers them only under a
// drill-down grant. The session token lives in this script's memory and
// nowhere else (no sessionStorage, localStorage or cookie), so a reload
// logs out.
//
// Every word on the page comes from TEXT below, in the language chosen
// (Chinese by default); switching re-draws what is on screen from the
// figures already read, without asking the server again.
"use strict";

(() => {
  // The rollup's columns, by group. `when` says what a figure counts:
  // "period" = in the chosen period; "end" = standing at the end of the
  // period (or today, if that is earlier); "now" = the current state,
  // whatever the period (teams are a register, not events).
  const COLUMNS = [
    { key: "visits", group: "visits", when: "period" },
    { key: "households_visited", group: "visits", when: "period" },
    { key: "aid_total_fen", group: "visits", when: "period", unit: "yuan" },
    { key: "fund_donations_fen", group: "visits", when: "period", unit: "yuan" },
    { key: "fund_payments_fen", group: "visits", when: "period", unit: "yuan" },
    { key: "migrants_contacted_30d", group: "visits", when: "end" },
    { key: "hardship_registered", group: "hardship", when: "end" },
    { key: "hardship_new", group: "hardship", when: "period" },
    { key: "hardship_closed", group: "hardship", when: "period" },
    { key: "hardship_visited_pct", group: "hardship", when: "period", unit: "pct" },
    { key: "follow_ups_overdue", group: "hardship", when: "end" },
    { key: "trainings", group: "training", when: "period" },
    { key: "training_attendance", group: "training", when: "period" },
    { key: "placements", group: "training", when: "period" },
    { key: "volunteer_hours", group: "training", when: "period", unit: "hours" },
    { key: "teams", group: "teams", when: "now" },
    { key: "team_categories", group: "teams", when: "now" },
    { key: "team_members", group: "teams", when: "now" },
    { key: "team_member_pct", group: "teams", when: "now", unit: "pct" },
    { key: "team_backbone_pct", group: "teams", when: "now", unit: "pct" },
  ];
  const GROUPS = ["visits", "hardship", "training", "teams"];
  const COLUMN = Object.fromEntries(COLUMNS.map((c) => [c.key, c]));
  // Figures compared with the previous period and a year earlier: those
  // that count what happened in a period (a snapshot compares with itself).
  const COMPARED = ["visits", "households_visited", "aid_total_fen", "hardship_new", "hardship_visited_pct",
    "trainings", "training_attendance", "placements", "fund_donations_fen", "fund_payments_fen", "volunteer_hours"];
  const HEALTH = ["devices", "devices_stale", "open_conflicts", "invalid_records", "future_visits"];
  const VISIT_KINDS = ["holiday_condolence", "special_difficulty", "routine", "migrant_phone", "migrant_letter", "migrant_home_visit"];

  const TEXT = {
    zh: {
      "app.title": "帮扶工作统计", "nav.session": "账户", "logout": "退出", "password.open": "修改密码",
      "login.title": "登录", "field.username": "用户名", "field.password": "密码", "login.submit": "登录",
      "login.toActivate": "有邀请码？激活账户", "activate.title": "激活账户",
      "activate.hint": "用邀请人给您的一次性邀请码设置您自己的密码。", "field.code": "邀请码",
      "field.newPassword": "新密码", "field.newPasswordAgain": "再次输入新密码", "activate.submit": "激活",
      "activate.toLogin": "返回登录", "password.title": "修改密码", "field.currentPassword": "当前密码",
      "password.submit": "修改", "cancel": "取消",
      "period.label": "期间", "period.year": "年", "period.quarter": "季度", "period.month": "月",
      "period.campaign": "节日走访", "period.range": "日期范围", "period.holiday": "节日", "period.value": "期间",
      "period.to": "截止日期", "period.show": "查询", "csv": "下载 CSV", "print": "打印报表",
      "nav.crumbs": "单位层级", "table.title": "汇总", "groups.label": "指标组",
      "group.visits": "走访与帮扶", "group.hardship": "困难党员台账", "group.training": "培训与就业", "group.teams": "志愿队伍",
      "definitions.title": "指标说明", "compare.title": "与上期、去年同期比较",
      "chart.months": "每月走访次数与帮扶金额", "chart.coverage": "困难党员走访覆盖率", "chart.data": "数据表",
      "health.title": "离线数据健康", "health.note": "现在的状况，不随所选期间变化。",
      "branch.back": "返回汇总", "branch.health": "离线数据健康（现在）", "branch.kinds": "本期走访类型",
      "branch.names": "名单", "branch.namesNote": "上级单位只看数字；名单仅在下钻授权有效期间可看，每次查看都记入审计日志。",
      "branch.showNames": "查看名单", "branch.namesRefused": "没有有效的下钻授权，不能查看名单。",
      "branch.namesCount": "共 {n} 人", "branch.open": "打开 {name} 的支部页",
      "holiday.spring-festival": "春节", "holiday.july-first": "七一", "holiday.mid-autumn": "中秋", "holiday.national-day": "国庆",
      "when.period": "本期", "when.end": "期末", "when.now": "现在",
      "unit": "单位", "total": "合计",
      "col.visits": "走访次数", "col.households_visited": "走访户数", "col.aid_total_fen": "帮扶金额(元)",
      "col.fund_donations_fen": "帮扶基金募集(元)", "col.fund_payments_fen": "帮扶基金支出(元)",
      "col.migrants_contacted_30d": "流动党员30天内联系", "col.hardship_registered": "在册困难党员",
      "col.hardship_new": "新增困难党员", "col.hardship_closed": "销号", "col.hardship_visited_pct": "走访覆盖率",
      "col.follow_ups_overdue": "逾期未跟进", "col.trainings": "培训场次", "col.training_attendance": "培训人次",
      "col.placements": "再就业人数", "col.volunteer_hours": "志愿服务时长(小时)", "col.teams": "文体队伍",
      "col.team_categories": "队伍类别", "col.team_members": "队伍中的党员", "col.team_member_pct": "党员占队员比例",
      "col.team_backbone_pct": "党员中骨干比例",
      "def.visits": "期间内记录的走访慰问次数（含节日慰问、特殊困难、日常走访、联系流动党员）。",
      "def.households_visited": "期间内被走访的不同家庭数，一户走访多次只算一户。",
      "def.aid_total_fen": "期间内走访时送出的现金与物资折价之和，单位元。",
      "def.fund_donations_fen": "期间内帮扶基金收到的捐款，单位元。",
      "def.fund_payments_fen": "期间内帮扶基金的支出（助学、医疗等），单位元。",
      "def.migrants_contacted_30d": "期末前30天内有过联系的流动党员人数。",
      "def.hardship_registered": "期末仍在册（未销号）的困难党员档案数。",
      "def.hardship_new": "期间内新建的困难党员档案数。",
      "def.hardship_closed": "期间内销号的困难党员档案数。",
      "def.hardship_visited_pct": "期间内在册的困难党员中，期间内被走访过的比例。",
      "def.follow_ups_overdue": "期末（或今天，取较早者）前到期而未完成的跟进事项数。",
      "def.trainings": "期间内举办的培训和讲座场次。",
      "def.training_attendance": "期间内培训的参加人次。",
      "def.placements": "期间内实现再就业的党员人数。",
      "def.volunteer_hours": "期间内志愿队伍活动的时长合计，单位小时。",
      "def.teams": "现有的文体与志愿队伍数，是当前的名册，不随期间变化。",
      "def.team_categories": "现有队伍的不同类别数。",
      "def.team_members": "现有队伍中的党员人数。",
      "def.team_member_pct": "现有队伍的全部队员中党员所占比例。",
      "def.team_backbone_pct": "队伍中的党员里担任骨干的比例。",
      "health.devices": "设备", "health.devices_stale": "7天未同步", "health.open_conflicts": "未解决冲突",
      "health.invalid_records": "无效记录", "health.future_visits": "日期在今天之后的走访",
      "compare.figure": "指标", "compare.change": "变化", "compare.previous": "上期", "compare.yearEarlier": "去年同期",
      "compare.current": "本期", "compare.none": "—", "compare.points": "{n} 个百分点",
      "chart.visits": "走访次数（左轴）", "chart.aid": "帮扶金额·元（右轴）", "chart.noData": "本期没有数据",
      "chart.month": "月份", "chart.members": "在册困难党员", "chart.visited": "其中被走访", "chart.coverageAxis": "走访覆盖率",
      "chart.monthsDesc": "{n} 个月：共走访 {visits} 次，帮扶金额 {aid} 元；走访最多的是 {top}。",
      "chart.coverageDesc": "{n} 个单位的困难党员走访覆盖率，从高到低：{list}。",
      "label.year": "{y}年", "label.quarter": "{y}年第{q}季度", "label.campaign": "{y}年{h}前走访",
      "title.report": "帮扶工作报表", "meta.period": "期间 {from} 至 {to}", "meta.generated": "生成于 {at}",
      "csv.prefix": "帮扶统计",
      "role.district_admin": "区级管理员", "role.district_auditor": "区级审计员", "role.sub_district_admin": "街道管理员",
      "role.branch_secretary": "支部书记", "role.volunteer": "志愿者",
      "kind.holiday_condolence": "节日慰问", "kind.special_difficulty": "特殊困难", "kind.routine": "日常走访",
      "kind.migrant_phone": "电话联系流动党员", "kind.migrant_letter": "书信联系流动党员", "kind.migrant_home_visit": "流动党员家访",
      "kind.count": "次数", "kind.amount": "金额(元)",
      "problem.year": "年份应为四位数字，如 2026", "problem.quarter": "季度应为 YYYY-Qn，如 2026-Q4",
      "problem.month": "月份应为 YYYY-MM，如 2026-11", "problem.range": "请选择起止日期",
      "problem.campaign": "请填写四位年份，如 2027",
      "err.read": "查询失败：{why}", "err.invalid_period": "所选期间无效", "err.forbidden": "没有权限查看",
      "err.not_found": "没有这个单位", "err.busy": "请求过多，请稍后再试", "err.server": "服务器暂时无法回答，请稍后再试",
      "err.unreachable": "无法连接服务器", "err.session": "请重新登录", "err.login": "用户名或密码错误",
      "err.mismatch": "两次输入的密码不一致", "err.wrongCurrent": "当前密码不正确", "err.newMismatch": "两次输入的新密码不一致",
      "err.other": "请求未被接受（{why}）",
      "activate.pending": "等待支部书记批准；批准后请用批准人交给您的邀请码激活",
      "activate.done": "账户已激活，请登录", "password.changed": "密码已修改；其他 {n} 个会话已退出",
      "groupNote.visits": "本期的走访、帮扶与基金；流动党员联系按期末前30天计。",
      "groupNote.hardship": "在册数与逾期跟进为期末状况，其余为本期发生数。",
      "groupNote.training": "本期的培训、再就业与志愿服务时长。",
      "groupNote.teams": "队伍是现在的名册，不随所选期间变化。",
    },
    en: {
      "app.title": "Aid work figures", "nav.session": "Account", "logout": "Log out", "password.open": "Change password",
      "login.title": "Log in", "field.username": "Username", "field.password": "Password", "login.submit": "Log in",
      "login.toActivate": "Have an invitation code? Activate your account", "activate.title": "Activate your account",
      "activate.hint": "Set your own password with the one-time code your inviter gave you.", "field.code": "Invitation code",
      "field.newPassword": "New password", "field.newPasswordAgain": "New password again", "activate.submit": "Activate",
      "activate.toLogin": "Back to log in", "password.title": "Change password", "field.currentPassword": "Current password",
      "password.submit": "Change", "cancel": "Cancel",
      "period.label": "Period", "period.year": "Year", "period.quarter": "Quarter", "period.month": "Month",
      "period.campaign": "Holiday campaign", "period.range": "Date range", "period.holiday": "Holiday", "period.value": "Period",
      "period.to": "Last day", "period.show": "Show", "csv": "Download CSV", "print": "Print report",
      "nav.crumbs": "Units", "table.title": "Rollup", "groups.label": "Figure groups",
      "group.visits": "Visits and aid", "group.hardship": "Hardship register", "group.training": "Training and jobs", "group.teams": "Volunteer teams",
      "definitions.title": "What each figure means", "compare.title": "Compared with the previous period and a year earlier",
      "chart.months": "Visits and aid per month", "chart.coverage": "Members in hardship visited", "chart.data": "Data table",
      "health.title": "Offline-data health", "health.note": "As it is now, whatever the period chosen.",
      "branch.back": "Back to the rollup", "branch.health": "Offline-data health (now)", "branch.kinds": "Visits by kind in the period",
      "branch.names": "Names", "branch.namesNote": "Upper levels see figures only; names show only while a drill-down grant is in force, and every read is in the audit log.",
      "branch.showNames": "Show names", "branch.namesRefused": "No drill-down grant in force: names cannot be shown.",
      "branch.namesCount": "{n} people", "branch.open": "Open the branch page of {name}",
      "holiday.spring-festival": "Spring Festival", "holiday.july-first": "1 July", "holiday.mid-autumn": "Mid-Autumn", "holiday.national-day": "National Day",
      "when.period": "in the period", "when.end": "at period end", "when.now": "now",
      "unit": "Unit", "total": "Total",
      "col.visits": "Visits", "col.households_visited": "Households visited", "col.aid_total_fen": "Aid (yuan)",
      "col.fund_donations_fen": "Fund donations (yuan)", "col.fund_payments_fen": "Fund payments (yuan)",
      "col.migrants_contacted_30d": "Migrant members contacted in 30 days", "col.hardship_registered": "Members in hardship registered",
      "col.hardship_new": "New hardship entries", "col.hardship_closed": "Entries closed", "col.hardship_visited_pct": "Visited share",
      "col.follow_ups_overdue": "Follow-ups overdue", "col.trainings": "Training sessions", "col.training_attendance": "Attendances",
      "col.placements": "Re-employed", "col.volunteer_hours": "Volunteer hours", "col.teams": "Teams",
      "col.team_categories": "Team categories", "col.team_members": "Members in teams", "col.team_member_pct": "Members' share of team people",
      "col.team_backbone_pct": "Backbones among members",
      "def.visits": "Visits recorded in the period (holiday condolences, special difficulties, routine visits, contacts with migrant members).",
      "def.households_visited": "Distinct households visited in the period; a household visited twice counts once.",
      "def.aid_total_fen": "Cash and goods (valued) handed over in the period's visits, in yuan.",
      "def.fund_donations_fen": "Donations the hardship fund received in the period, in yuan.",
      "def.fund_payments_fen": "Payments out of the hardship fund in the period (schooling, medical care, ...), in yuan.",
      "def.migrants_contacted_30d": "Migrant members contacted in the 30 days up to the end of the period.",
      "def.hardship_registered": "Hardship entries open (not closed) at the end of the period.",
      "def.hardship_new": "Hardship entries opened in the period.",
      "def.hardship_closed": "Hardship entries closed in the period.",
      "def.hardship_visited_pct": "Of the members with a hardship entry open in the period, the share visited in the period.",
      "def.follow_ups_overdue": "Follow-ups due before the end of the period (or today, if earlier) and not done.",
      "def.trainings": "Training sessions and lectures held in the period.",
      "def.training_attendance": "Attendances at the period's training sessions.",
      "def.placements": "Members placed in jobs in the period.",
      "def.volunteer_hours": "Hours of the volunteer teams' activities in the period.",
      "def.teams": "Culture, sports and volunteer teams as they are now: a register, the same whatever the period.",
      "def.team_categories": "Distinct categories of the current teams.",
      "def.team_members": "Members in the current teams.",
      "def.team_member_pct": "Members' share of everyone in the current teams.",
      "def.team_backbone_pct": "Share of the members in teams who are a team's backbone.",
      "health.devices": "Devices", "health.devices_stale": "Not synced for 7 days", "health.open_conflicts": "Open conflicts",
      "health.invalid_records": "Invalid records", "health.future_visits": "Visits dated after today",
      "compare.figure": "Figure", "compare.change": "Change", "compare.previous": "Previous period", "compare.yearEarlier": "A year earlier",
      "compare.current": "This period", "compare.none": "—", "compare.points": "{n} pts",
      "chart.visits": "Visits (left axis)", "chart.aid": "Aid, yuan (right axis)", "chart.noData": "No data for this period",
      "chart.month": "Month", "chart.members": "Members in hardship", "chart.visited": "Visited", "chart.coverageAxis": "Share visited",
      "chart.monthsDesc": "{n} months: {visits} visits and {aid} yuan of aid in all; the most visits in {top}.",
      "chart.coverageDesc": "Share of members in hardship visited, for {n} units, highest first: {list}.",
      "label.year": "{y}", "label.quarter": "Q{q} {y}", "label.campaign": "{h} {y} campaign",
      "title.report": "Aid work report", "meta.period": "Period {from} to {to}", "meta.generated": "Generated {at}",
      "csv.prefix": "rollup",
      "role.district_admin": "District administrator", "role.district_auditor": "District auditor", "role.sub_district_admin": "Sub-district administrator",
      "role.branch_secretary": "Branch secretary", "role.volunteer": "Volunteer",
      "kind.holiday_condolence": "Holiday condolence", "kind.special_difficulty": "Special difficulty", "kind.routine": "Routine visit",
      "kind.migrant_phone": "Migrant member, by phone", "kind.migrant_letter": "Migrant member, by letter", "kind.migrant_home_visit": "Migrant member, home visit",
      "kind.count": "Visits", "kind.amount": "Aid (yuan)",
      "problem.year": "A year is four digits, as in 2026", "problem.quarter": "A quarter is YYYY-Qn, as in 2026-Q4",
      "problem.month": "A month is YYYY-MM, as in 2026-11", "problem.range": "Choose both dates of the range",
      "problem.campaign": "Type a four-digit year, as in 2027",
      "err.read": "The figures could not be read: {why}", "err.invalid_period": "The period is not one the server takes", "err.forbidden": "You may not see this",
      "err.not_found": "No such unit", "err.busy": "Too many requests; try again shortly", "err.server": "The server cannot answer now; try again shortly",
      "err.unreachable": "The server cannot be reached", "err.session": "Please log in again", "err.login": "Wrong username or password",
      "err.mismatch": "The two passwords differ", "err.wrongCurrent": "The current password is wrong", "err.newMismatch": "The two new passwords differ",
      "err.other": "The request was refused ({why})",
      "activate.pending": "Waiting for the branch secretary's approval; once approved, activate with the code the approver gives you",
      "activate.done": "Activated: log in", "password.changed": "Password changed; {n} other sessions ended",
      "groupNote.visits": "The period's visits, aid and fund; migrant contacts count the 30 days up to the period's end.",
      "groupNote.hardship": "Registered and overdue are as at the period's end; the rest happened in the period.",
      "groupNote.training": "The period's training, re-employment and volunteer hours.",
      "groupNote.teams": "Teams are the current register, the same whatever the period.",
    },
  };

  const SVG = "http://www.w3.org/2000/svg";
  // In memory only. `view` holds what is on screen, to redraw it in the
  // other language or at another width without asking again.
  const state = { token: null, trail: [], shownTrail: [], topName: "", lang: "zh", group: "visits", view: null, branch: null, me: null };
  const $ = (id) => document.getElementById(id);

  function t(key, vars = {}) {
    const text = TEXT[state.lang][key] ?? TEXT.zh[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
  }
  const locale = () => (state.lang === "zh" ? "zh-CN" : "en-GB");

  // An element with `attrs` set by setAttribute (callers pass only fixed
  // attribute names: class, scope, data-*, aria-*, and numbers or fixed
  // words for SVG geometry) and `children` appended as text nodes or
  // elements.
  function el(tag, attrs = {}, ...children) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    node.append(...children.map((c) => (c instanceof Node ? c : String(c ?? ""))));
    return node;
  }

  const number = (value, digits = 0) =>
    Number(value || 0).toLocaleString(locale(), { minimumFractionDigits: digits, maximumFractionDigits: digits });

  function fmt(value, unit) {
    if (unit === "yuan") return number(value / 100, 2);
    if (unit === "pct") return `${Number(value || 0).toLocaleString(locale(), { maximumFractionDigits: 1 })}%`;
    if (unit === "hours") return Number(value || 0).toLocaleString(locale(), { maximumFractionDigits: 1 });
    return number(value);
  }

  // A YYYY-MM-DD date in the chosen language ("2026年1月20日", "20 Jan 2026").
  function fmtDate(text) {
    const [y, m, d] = String(text).split("-").map(Number);
    return new Intl.DateTimeFormat(locale(), { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" })
      .format(new Date(Date.UTC(y, m - 1, d)));
  }

  function fmtMonth(text, style = "long") {
    const [y, m] = String(text).split("-").map(Number);
    const options = style === "short" ? { month: "short", timeZone: "UTC" } : { year: "numeric", month: "long", timeZone: "UTC" };
    return new Intl.DateTimeFormat(locale(), options).format(new Date(Date.UTC(y, m - 1, 1)));
  }

  // What a period query names, in words: "2026年第4季度", "Spring Festival 2027 campaign".
  function periodLabel(query) {
    const params = new URLSearchParams(query);
    if (params.has("year")) return t("label.year", { y: params.get("year") });
    const quarter = /^(\d{4})-Q(\d)$/.exec(params.get("quarter") || "");
    if (quarter) return t("label.quarter", { y: quarter[1], q: quarter[2] });
    if (params.has("month")) return fmtMonth(params.get("month"));
    const campaign = /^(\d{4})-(.+)$/.exec(params.get("campaign") || "");
    if (campaign) return t("label.campaign", { y: campaign[1], h: t(`holiday.${campaign[2]}`) });
    return `${fmtDate(params.get("from"))} – ${fmtDate(params.get("to"))}`;
  }

  // The server's refusal in the chosen language: by its code, else by its
  // status; its own (English) words only for what has no translation.
  async function refusalText(response) {
    if (!response) return t("err.unreachable");
    const body = await response.json().catch(() => ({}));
    if (body.code && TEXT.zh[`err.${body.code}`]) return t(`err.${body.code}`);
    const byStatus = { 403: "err.forbidden", 404: "err.not_found", 429: "err.busy" };
    if (byStatus[response.status]) return t(byStatus[response.status]);
    if (response.status >= 500) return t("err.server");
    return t("err.other", { why: body.error || response.statusText });
  }

  async function api(path) {
    const response = await fetch(path, { headers: { authorization: `Bearer ${state.token}` } }).catch(() => null);
    if (response && response.status === 401) {
      showLogin();
      throw new Error(t("err.session"));
    }
    if (!response || !response.ok) throw new Error(await refusalText(response));
    return response;
  }
  const json = async (path) => (await api(path)).json();

  function periodQuery() {
    const kind = $("period-kind").value, value = $("period-value").value.trim();
    if (kind === "range") return `from=${encodeURIComponent(value)}&to=${encodeURIComponent($("period-to").value)}`;
    if (kind === "campaign") return `campaign=${encodeURIComponent(`${value}-${$("period-holiday").value}`)}`;
    return `${kind}=${encodeURIComponent(value)}`;
  }

  const tenantParam = (id) => (id ? `&tenant=${encodeURIComponent(id)}` : "");
  function tenantQuery() {
    const last = state.trail[state.trail.length - 1];
    return tenantParam(last && last.id);
  }

  // What is wrong with the period typed, in the chosen language, or "".
  function periodProblem() {
    const kind = $("period-kind").value, value = $("period-value").value.trim();
    if (kind === "range") return value && $("period-to").value ? "" : t("problem.range");
    const forms = { year: /^\d{4}$/, quarter: /^\d{4}-Q[1-4]$/, month: /^\d{4}-(0[1-9]|1[0-2])$/, campaign: /^\d{4}$/ };
    return forms[kind].test(value) ? "" : t(`problem.${kind}`);
  }

  // ---- The rollup table ------------------------------------------------

  function columnHeading(c) {
    return el("th", { scope: "col", "data-key": c.key, title: t(`def.${c.key}`) },
      t(`col.${c.key}`), el("span", { class: "when" }, t(`when.${c.when}`)));
  }

  // The first cell of a row: the unit's name, as a button that drills into
  // a sub-district or opens a branch's page (a button, so the keyboard
  // reaches it).
  // The total row is called the total, not by the unit it totals, so
  // that nobody adds it to the rows above it.
  const unitName = (row, total) => (total ? t("total") : row.tenant);

  function unitCell(row, plain, total) {
    if (plain) return el("th", { scope: "row" }, unitName(row, total));
    const button = el("button", { type: "button", class: "link", "data-level": row.level }, row.tenant);
    if (row.level === "branch") {
      button.setAttribute("aria-label", t("branch.open", { name: row.tenant }));
      button.addEventListener("click", () => openBranch(row));
    } else {
      // From the path on screen, not one a load still under way may have
      // changed: a double click or a second row must not stack steps.
      button.addEventListener("click", () => {
        state.trail = [...state.shownTrail, { id: row.tenant_id, name: row.tenant }];
        load();
      });
    }
    return el("th", { scope: "row" }, button);
  }

  // A row of figures; `plain` (the total, and the printed tables) names the
  // unit without a button.
  function figureRow(row, columns, { total = false, plain = total } = {}) {
    const tr = el("tr", total ? { class: "total" } : { class: row.level === "branch" ? "branch" : "drill" }, unitCell(row, plain, total),
      ...columns.map((c) => el("td", { "data-key": c.key, "data-label": `${t(`col.${c.key}`)} · ${t(`when.${c.when}`)}` }, fmt(row[c.key], c.unit))));
    tr.dataset.tenant = row.tenant_id;
    return tr;
  }

  function renderTable(rollup) {
    const columns = COLUMNS.filter((c) => c.group === state.group);
    const table = $("rollup");
    table.dataset.group = state.group;
    table.querySelector("thead").replaceChildren(el("tr", {}, el("th", { scope: "col" }, t("unit")), ...columns.map(columnHeading)));
    table.querySelector("tbody").replaceChildren(...rollup.rows.map((r) => figureRow(r, columns)), figureRow(rollup.total, columns, { total: true }));
    const title = `${t("table.title")} · ${rollup.tenant} · ${periodLabel(rollup.query)}`;
    $("table-title").textContent = title;
    $("table-title").dataset.period = `${rollup.period.from}/${rollup.period.to}`;
    $("rollup-caption").textContent = `${title} (${rollup.period.from} – ${rollup.period.to})`;
    $("group-note").textContent = t(`groupNote.${state.group}`);
    for (const button of $("groups").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.group === state.group));
    }
    $("definitions").replaceChildren(...COLUMNS.flatMap((c) => [
      el("dt", {}, `${t(`col.${c.key}`)} (${t(`when.${c.when}`)})`), el("dd", {}, t(`def.${c.key}`)),
    ]));
  }

  // The printed report: every group's columns, a table each.
  function renderPrintTables(rollup) {
    $("print-tables").replaceChildren(...GROUPS.map((group) => {
      const columns = COLUMNS.filter((c) => c.group === group);
      return el("div", {},
        el("h2", {}, t(`group.${group}`)),
        el("table", {},
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, t("unit")), ...columns.map(columnHeading))),
          el("tbody", {}, ...rollup.rows.map((r) => figureRow(r, columns, { plain: true })), figureRow(rollup.total, columns, { total: true }))));
    }));
    $("print-title").textContent = `${t("title.report")} · ${rollup.tenant} · ${periodLabel(rollup.query)}`;
    const at = new Date(state.view.readAt).toLocaleString(locale());
    $("print-meta").textContent = `${t("meta.period", { from: rollup.period.from, to: rollup.period.to })} · ${t("meta.generated", { at })}`;
    $("print-generated").textContent = `${rollup.tenant} · ${periodLabel(rollup.query)} · ${t("meta.generated", { at })}`;
  }

  function renderCrumbs(rollup) {
    const top = state.trail.length ? el("button", { type: "button", class: "link" }, state.topName) : el("span", { class: "here" }, rollup.tenant);
    top.addEventListener("click", () => { state.trail = []; load(); });
    const steps = state.trail.flatMap((step, i) => {
      const last = i === state.trail.length - 1;
      const node = last ? el("span", { class: "here", "aria-current": "page" }, step.name) : el("button", { type: "button", class: "link" }, step.name);
      if (!last) node.addEventListener("click", () => { state.trail = state.trail.slice(0, i + 1); load(); });
      return [" › ", node];
    });
    $("crumbs").replaceChildren(top, ...steps);
  }

  // ---- Comparisons -----------------------------------------------------

  function change(current, base, unit) {
    if (base === undefined || base === null) return { text: t("compare.none"), cls: "" };
    const diff = current - base;
    const sign = diff > 0 ? "+" : diff < 0 ? "−" : "±";
    const cls = diff > 0 ? "up" : diff < 0 ? "down" : "";
    if (unit === "pct") return { text: t("compare.points", { n: `${sign}${Math.abs(diff).toLocaleString(locale(), { maximumFractionDigits: 1 })}` }), cls };
    if (base === 0) return { text: diff === 0 ? "±0%" : t("compare.none"), cls };
    return { text: `${sign}${Math.abs((diff / base) * 100).toLocaleString(locale(), { maximumFractionDigits: 1 })}%`, cls };
  }

  function renderCompare(view) {
    const { rollup, previous, yearEarlier } = view;
    const heading = (key, ref) => el("th", { scope: "col" }, t(key), el("span", { class: "when" }, ref ? periodLabel(ref.query) : t("compare.none")));
    $("compare").querySelector("thead").replaceChildren(el("tr", {},
      el("th", { scope: "col" }, t("compare.figure")),
      heading("compare.current", { query: rollup.query }),
      heading("compare.previous", rollup.previous), el("th", { scope: "col" }, t("compare.change")),
      heading("compare.yearEarlier", rollup.year_earlier), el("th", { scope: "col" }, t("compare.change"))));
    const cell = (which, key, figures) => {
      const c = COLUMN[key];
      const label = `${which === "current" ? t("compare.current") : which === "previous" ? t("compare.previous") : t("compare.yearEarlier")}`;
      return figures
        ? el("td", { "data-which": which, "data-key": key, "data-value": figures[key], "data-label": label }, fmt(figures[key], c.unit))
        : el("td", { "data-which": which, "data-key": key, "data-label": label }, t("compare.none"));
    };
    const changeCell = (key, base) => {
      const { text, cls } = change(rollup.total[key], base ? base[key] : undefined, COLUMN[key].unit);
      return el("td", { class: cls, "data-label": t("compare.change") }, text);
    };
    $("compare").querySelector("tbody").replaceChildren(...COMPARED.map((key) => el("tr", { "data-key": key },
      el("th", { scope: "row" }, t(`col.${key}`)),
      cell("current", key, rollup.total),
      cell("previous", key, previous), changeCell(key, previous),
      cell("year_earlier", key, yearEarlier), changeCell(key, yearEarlier))));
  }

  // ---- Charts ----------------------------------------------------------

  // A label's width: measured once it is in the page, estimated before
  // (a CJK character is about a font size wide, others about half).
  function textWidth(node, text) {
    const measured = node && node.getComputedTextLength ? node.getComputedTextLength() : 0;
    if (measured) return measured;
    return [...String(text)].reduce((w, ch) => w + (ch.codePointAt(0) > 0x2e80 ? 11 : 6.5), 0);
  }

  // Steps of 1, 2 or 5 times a power of ten, from 0 up past `max`.
  function ticks(max, count = 4, whole = false) {
    if (!(max > 0)) return [0, 1];
    let step = 10 ** Math.floor(Math.log10(max / count));
    for (const m of [1, 2, 5, 10]) {
      if (max / (step * m) <= count) { step *= m; break; }
    }
    if (whole) step = Math.max(1, Math.round(step));
    const out = [];
    for (let v = 0; v < max + step; v += step) out.push(v);
    return out;
  }

  // The width the chart has; drawn while hidden (no width), a guess, and
  // drawn again when shown.
  function chartWidth(svg) {
    const width = svg.parentElement.clientWidth;
    return width ? Math.max(260, Math.floor(width - 2)) : 480;
  }

  function prepare(svg, width, height, desc) {
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("height", String(height));
    const description = el("svg:desc", { id: `${svg.id}-desc` }, desc);
    svg.replaceChildren(description);
  }

  function noData(svg) {
    const width = chartWidth(svg), height = 120;
    prepare(svg, width, height, t("chart.noData"));
    svg.append(el("svg:text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, t("chart.noData")));
    svg.dataset.empty = "true";
  }

  // The months of the period, oldest first, each with its visits and aid
  // (months without visits are there, with zeros).
  function monthsOf(period, breakdown) {
    const out = [];
    let [y, m] = period.from.split("-").map(Number);
    const [ty, tm] = period.to.split("-").map(Number);
    while (y < ty || (y === ty && m <= tm)) {
      out.push({ month: `${y}-${String(m).padStart(2, "0")}`, visits: 0, aid: 0 });
      m += 1;
      if (m > 12) { m = 1; y += 1; }
    }
    const index = new Map(out.map((o) => [o.month, o]));
    for (const row of breakdown) {
      const entry = index.get(String(row.category));
      if (entry) { entry.visits += row.count; entry.aid += row.amount; }
    }
    return out;
  }

  // Visits as bars on the left axis, aid as a line on the right axis; month
  // names thinned so no two touch; the values are in tooltips and the
  // data table, not on the bars.
  function monthsChart(svg, months) {
    const total = months.reduce((s, m) => ({ visits: s.visits + m.visits, aid: s.aid + m.aid }), { visits: 0, aid: 0 });
    $("chart-months-data").querySelector("thead").replaceChildren(el("tr", {},
      el("th", { scope: "col" }, t("chart.month")), el("th", { scope: "col" }, t("col.visits")), el("th", { scope: "col" }, t("col.aid_total_fen"))));
    $("chart-months-data").querySelector("tbody").replaceChildren(...months.map((m) => el("tr", {},
      el("th", { scope: "row" }, fmtMonth(m.month)), el("td", {}, number(m.visits)), el("td", {}, fmt(m.aid, "yuan")))));
    if (!months.length || (total.visits === 0 && total.aid === 0)) return noData(svg);
    delete svg.dataset.empty;
    const width = chartWidth(svg), height = 260;
    const pad = { left: 44, right: 52, top: 30, bottom: 28 };
    const plotW = width - pad.left - pad.right, plotH = height - pad.top - pad.bottom;
    const top = months.reduce((a, b) => (b.visits > a.visits ? b : a));
    prepare(svg, width, height, t("chart.monthsDesc", { n: months.length, visits: number(total.visits), aid: fmt(total.aid, "yuan"), top: fmtMonth(top.month) }));
    const visitTicks = ticks(Math.max(...months.map((m) => m.visits)), 4, true);
    const aidTicks = ticks(Math.max(...months.map((m) => m.aid)) / 100, 4);
    const vMax = visitTicks[visitTicks.length - 1], aMax = aidTicks[aidTicks.length - 1];
    const yOf = (v, max) => pad.top + plotH - (v / max) * plotH;
    const compact = new Intl.NumberFormat(locale(), { notation: "compact", maximumFractionDigits: 1 });
    const nodes = [];
    visitTicks.forEach((v) => {
      const y = yOf(v, vMax);
      nodes.push(el("svg:line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid" }));
      nodes.push(el("svg:text", { x: pad.left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, number(v)));
    });
    aidTicks.forEach((v) => {
      nodes.push(el("svg:text", { x: width - pad.right + 6, y: yOf(v, aMax) + 4, "text-anchor": "start", class: "tick" }, compact.format(v)));
    });
    nodes.push(el("svg:line", { x1: pad.left, x2: width - pad.right, y1: pad.top + plotH, y2: pad.top + plotH, class: "axis" }));
    nodes.push(el("svg:text", { x: pad.left, y: 14, "text-anchor": "start", class: "legend-visits" }, `■ ${t("chart.visits")}`));
    nodes.push(el("svg:text", { x: width - pad.right, y: 14, "text-anchor": "end", class: "legend-aid" }, `● ${t("chart.aid")}`));
    const band = plotW / months.length;
    const widest = Math.max(...months.map((m) => textWidth(null, fmtMonth(m.month, "short"))));
    const every = Math.max(1, Math.ceil((widest + 8) / band));
    const points = [];
    months.forEach((m, i) => {
      const x = pad.left + i * band;
      const y = yOf(m.visits, vMax);
      const tip = `${fmtMonth(m.month)}: ${number(m.visits)} · ${fmt(m.aid, "yuan")}`;
      nodes.push(el("svg:rect", { x: x + band * 0.2, y, width: Math.max(1, band * 0.6), height: pad.top + plotH - y, class: "visits", "data-month": m.month, "data-visits": m.visits },
        el("svg:title", {}, tip)));
      points.push([x + band / 2, yOf(m.aid / 100, aMax)]);
      if (i % every === 0) {
        nodes.push(el("svg:text", { x: x + band / 2, y: height - 10, "text-anchor": "middle", class: "tick" }, fmtMonth(m.month, "short")));
      }
    });
    nodes.push(el("svg:polyline", { points: points.map((p) => p.join(",")).join(" "), class: "aid" }));
    points.forEach(([x, y], i) => nodes.push(el("svg:circle", { cx: x, cy: y, r: 3, class: "aid-dot", "data-aid": months[i].aid },
      el("svg:title", {}, `${fmtMonth(months[i].month)}: ${fmt(months[i].aid, "yuan")}`))));
    svg.append(...nodes);
  }

  // Coverage on a fixed 0–100% axis, one row per unit, highest first, with
  // a line at 100%: 8% looks like 8%, however the others do.
  function coverageChart(svg, rows) {
    const sorted = [...rows].sort((a, b) => b.hardship_visited_pct - a.hardship_visited_pct || a.tenant.localeCompare(b.tenant));
    $("chart-coverage-data").querySelector("thead").replaceChildren(el("tr", {},
      el("th", { scope: "col" }, t("unit")), el("th", { scope: "col" }, t("chart.members")),
      el("th", { scope: "col" }, t("chart.visited")), el("th", { scope: "col" }, t("col.hardship_visited_pct"))));
    $("chart-coverage-data").querySelector("tbody").replaceChildren(...sorted.map((r) => el("tr", {},
      el("th", { scope: "row" }, r.tenant), el("td", {}, number(r.hardship_members)),
      el("td", {}, number(r.hardship_members_visited)), el("td", {}, fmt(r.hardship_visited_pct, "pct")))));
    if (!sorted.length || sorted.every((r) => !r.hardship_members)) return noData(svg);
    delete svg.dataset.empty;
    const width = chartWidth(svg), rowH = 24, top = 6, bottom = 40;
    const height = top + sorted.length * rowH + bottom;
    prepare(svg, width, height, t("chart.coverageDesc", {
      n: sorted.length, list: sorted.map((r) => `${r.tenant} ${fmt(r.hardship_visited_pct, "pct")}`).join(", "),
    }));
    const nameSpace = Math.min(width * 0.4, Math.max(...sorted.map((r) => textWidth(null, r.tenant))) + 4);
    const plotL = nameSpace + 10, plotR = width - 44, plotW = plotR - plotL, axisY = top + sorted.length * rowH;
    const xOf = (pct) => plotL + (Math.min(100, Math.max(0, pct)) / 100) * plotW;
    const nodes = [];
    for (const pct of [0, 25, 50, 75, 100]) {
      nodes.push(el("svg:line", { x1: xOf(pct), x2: xOf(pct), y1: top, y2: axisY, class: pct === 100 ? "reference" : "grid" }));
      nodes.push(el("svg:text", { x: xOf(pct), y: axisY + 14, "text-anchor": "middle", class: "tick" }, `${pct}%`));
    }
    nodes.push(el("svg:line", { x1: plotL, x2: plotR, y1: axisY, y2: axisY, class: "axis" }));
    nodes.push(el("svg:text", { x: plotL + plotW / 2, y: axisY + 32, "text-anchor": "middle", class: "axis-title" }, t("chart.coverageAxis")));
    svg.append(...nodes);
    sorted.forEach((r, i) => {
      const y = top + i * rowH;
      const name = el("svg:text", { x: plotL - 8, y: y + rowH / 2 + 4, "text-anchor": "end", class: "name" }, r.tenant);
      svg.append(name);
      // Too long a name is cut to fit, whole in the tooltip and the table.
      if (textWidth(name, r.tenant) > nameSpace) {
        const chars = [...r.tenant];
        while (chars.length > 1 && textWidth(name, name.textContent) > nameSpace) {
          chars.pop();
          name.textContent = `${chars.join("")}…`;
        }
      }
      const bar = el("svg:rect", { x: plotL, y: y + 5, width: xOf(r.hardship_visited_pct) - plotL, height: rowH - 10, class: "visits",
        "data-tenant": r.tenant_id, "data-pct": r.hardship_visited_pct }, el("svg:title", {}, `${r.tenant}: ${fmt(r.hardship_visited_pct, "pct")}`));
      svg.append(bar, el("svg:text", { x: xOf(r.hardship_visited_pct) + 4, y: y + rowH / 2 + 4, "text-anchor": "start", class: "value" }, fmt(r.hardship_visited_pct, "pct")));
    });
    svg.dataset.plotLeft = String(plotL);
    svg.dataset.plotWidth = String(plotW);
  }

  // ---- Health ----------------------------------------------------------

  function renderHealth(health) {
    $("health").querySelector("thead").replaceChildren(el("tr", {}, el("th", { scope: "col" }, t("unit")),
      ...HEALTH.map((key) => el("th", { scope: "col", "data-key": key }, t(`health.${key}`)))));
    $("health").querySelector("tbody").replaceChildren(...health.map((h) => el("tr", {}, el("th", { scope: "row" }, h.tenant),
      ...HEALTH.map((key) => el("td", { "data-key": key, "data-label": t(`health.${key}`), class: key !== "devices" && h[key] > 0 ? "flag" : "" }, number(h[key]))))));
  }

  // ---- Loading and drawing ---------------------------------------------

  // The charts alone: what a new width changes. The table is left as it is,
  // so a resize (a phone turned) does not take the keyboard's focus away.
  function drawCharts() {
    const view = state.view;
    if (!view) return;
    monthsChart($("chart-months"), monthsOf(view.rollup.period, view.months));
    coverageChart($("chart-coverage"), view.rollup.rows);
    document.body.dataset.charts = String(Number(document.body.dataset.charts || 0) + 1);
  }

  function render() {
    const view = state.view;
    if (!view) return;
    renderTable(view.rollup);
    renderCrumbs(view.rollup);
    renderCompare(view);
    drawCharts();
    renderHealth(view.health);
    renderPrintTables(view.rollup);
    document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
  }

  // Nothing of an earlier period stays on screen under an error about
  // another: the table, comparisons, charts and health panel are emptied.
  function clearFigures() {
    state.view = null;
    for (const id of ["rollup", "compare", "health", "chart-months-data", "chart-coverage-data"]) {
      $(id).querySelector("tbody").replaceChildren();
    }
    $("table-title").textContent = `${t("table.title")} · —`;
    delete $("table-title").dataset.period;
    $("compare").querySelector("thead").replaceChildren();
    for (const id of ["rollup-caption", "print-title", "print-meta", "print-generated", "crumbs"]) $(id).replaceChildren();
    for (const id of ["chart-months", "chart-coverage"]) $(id).replaceChildren(el("svg:desc", { id: `${id}-desc` }));
    $("print-tables").replaceChildren();
  }

  // Loads may overlap (a click while the last one is still reading): only
  // the latest draws, so no period's figures land under another's title.
  let latestLoad = 0;

  async function load() {
    const ticket = ++latestLoad;
    $("status").textContent = "";
    const problem = periodProblem();
    if (problem) {
      clearFigures();
      $("status").textContent = problem;
      return;
    }
    try {
      const period = periodQuery(), tenant = tenantQuery();
      const rollup = await json(`/api/v1/rollups?${period}${tenant}`);
      const compared = (ref) => (ref ? json(`/api/v1/rollups?${ref.query}${tenant}`).then((r) => r.total) : Promise.resolve(null));
      const [months, health, previous, yearEarlier] = await Promise.all([
        json(`/api/v1/rollups/breakdown?by=visits_by_month&${period}${tenant}`),
        json(`/api/v1/health?${tenant.slice(1)}`),
        compared(rollup.previous),
        compared(rollup.year_earlier),
      ]);
      if (ticket !== latestLoad) return;
      if (!state.trail.length) state.topName = rollup.tenant;
      state.shownTrail = [...state.trail];
      state.view = { rollup, months, health, previous, yearEarlier, readAt: Date.now() };
      render();
      // Everything on the page now shows this load: tests (and people) can rely on it.
      document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
    } catch (e) {
      if (ticket !== latestLoad) return;
      // The crumbs still show the path last drawn: "show" goes there again.
      state.trail = [...state.shownTrail];
      clearFigures();
      $("status").textContent = t("err.read", { why: e.message });
    }
  }

  // ---- CSV of the view -------------------------------------------------

  // A cell by the server's rule (server/src/rollup/csv.rs): text that a
  // spreadsheet would run as a formula, half- or full-width, gets a leading
  // ' and quotes; a comma, semicolon, quote or line break gets quotes.
  // Numbers are ours, never text.
  function csvCell(value) {
    if (typeof value === "number") return String(value);
    const text = String(value ?? "");
    const quoted = (v) => `"${v.replaceAll('"', '""')}"`;
    if (/^[=+\-@\t\r\n\uFF1D\uFF0B\uFF0D\uFF20]/.test(text)) return quoted(`'${text}`);
    return /[,;"\r\n]/.test(text) ? quoted(text) : text;
  }

  // Exactly what the view shows, in its language: every group's columns
  // (headings with what they count), yuan not fen, units by name.
  function csvOfView() {
    const { rollup } = state.view;
    const heading = [t("unit"), ...COLUMNS.map((c) => `${t(`col.${c.key}`)} (${t(`when.${c.when}`)})`)];
    const value = (row, c) => (c.unit === "yuan" ? Number((row[c.key] / 100).toFixed(2)) : row[c.key]);
    const lines = [heading, ...rollup.rows.map((row) => [row.tenant, ...COLUMNS.map((c) => value(row, c))]),
      [t("total"), ...COLUMNS.map((c) => value(rollup.total, c))]];
    return lines.map((line) => line.map(csvCell).join(",")).join("\r\n") + "\r\n";
  }

  function csvFileName() {
    const { rollup } = state.view;
    const safe = (text) => String(text).replace(/[\\/:*?"<>|\s]+/g, "_");
    return `${safe(t("csv.prefix"))}_${safe(rollup.tenant)}_${safe(periodLabel(rollup.query))}.csv`;
  }

  function downloadCsv() {
    if (!state.view) return;
    const blob = new Blob(["\ufeff", csvOfView()], { type: "text/csv;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: csvFileName() });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  // ---- The branch page -------------------------------------------------

  // A branch's page for the period of the table it was opened from.
  async function openBranch(row) {
    if (!state.view) return;
    const branch = { id: row.tenant_id, name: row.tenant };
    state.branch = branch;
    $("branch-names-list").replaceChildren();
    $("branch-names-status").textContent = "";
    try {
      const period = state.view.rollup.query, tenant = tenantParam(row.tenant_id);
      const [rollup, health, kinds] = await Promise.all([
        json(`/api/v1/rollups?${period}${tenant}`),
        json(`/api/v1/health?${tenant.slice(1)}`),
        json(`/api/v1/rollups/breakdown?by=visits_by_kind&${period}${tenant}`),
      ]);
      // Another branch was opened meanwhile, or the session ended.
      if (state.branch !== branch) return;
      branch.view = { rollup, health, kinds };
      renderBranch();
      $("app").hidden = true;
      $("branch-view").hidden = false;
      $("branch-title").focus();
      document.body.dataset.branchLoads = String(Number(document.body.dataset.branchLoads || 0) + 1);
    } catch (e) {
      if (state.branch === branch) $("status").textContent = t("err.read", { why: e.message });
    }
  }

  function renderBranch() {
    const view = state.branch && state.branch.view;
    if (!view) return;
    const figures = view.rollup.rows[0] || view.rollup.total;
    $("branch-title").textContent = view.rollup.tenant;
    $("branch-title").setAttribute("tabindex", "-1");
    $("branch-period").textContent = `${periodLabel(view.rollup.query)} (${view.rollup.period.from} – ${view.rollup.period.to})`;
    $("branch-figures").replaceChildren(...GROUPS.map((group) => el("div", {}, el("h3", {}, t(`group.${group}`)),
      el("dl", {}, ...COLUMNS.filter((c) => c.group === group).flatMap((c) => [
        el("dt", {}, t(`col.${c.key}`), el("span", { class: "when" }, t(`when.${c.when}`))),
        el("dd", { "data-key": c.key }, fmt(figures[c.key], c.unit)),
      ])))));
    const health = view.health[0] || {};
    $("branch-health").replaceChildren(...HEALTH.flatMap((key) => [
      el("dt", {}, t(`health.${key}`)), el("dd", { "data-key": key, class: key !== "devices" && health[key] > 0 ? "flag" : "" }, number(health[key])),
    ]));
    const byKind = new Map(view.kinds.map((k) => [k.category, k]));
    $("branch-kinds").querySelector("thead").replaceChildren(el("tr", {},
      el("th", { scope: "col" }, t("period.label")), el("th", { scope: "col" }, t("kind.count")), el("th", { scope: "col" }, t("kind.amount"))));
    $("branch-kinds").querySelector("tbody").replaceChildren(...VISIT_KINDS.map((kind) => el("tr", { "data-kind": kind },
      el("th", { scope: "row" }, t(`kind.${kind}`)), el("td", {}, number(byKind.get(kind)?.count)), el("td", {}, fmt(byKind.get(kind)?.amount ?? 0, "yuan")))));
  }

  async function showNames() {
    const branch = state.branch, token = state.token;
    if (!branch) return;
    // Names go only onto the page of the branch they are of, in the
    // session that asked: not onto a page opened since, nor after logout.
    const current = () => state.branch === branch && state.token === token;
    $("branch-names-status").textContent = "";
    $("branch-names-list").replaceChildren();
    const response = await fetch(`/api/v1/branches/${encodeURIComponent(branch.id)}/members`, { headers: { authorization: `Bearer ${token}` } }).catch(() => null);
    if (!current()) return;
    if (response && response.status === 403) {
      $("branch-names-status").textContent = t("branch.namesRefused");
      return;
    }
    if (!response || !response.ok) {
      $("branch-names-status").textContent = await refusalText(response);
      return;
    }
    const members = await response.json().catch(() => []);
    if (!current()) return;
    $("branch-names-status").textContent = t("branch.namesCount", { n: number(members.length) });
    $("branch-names-list").replaceChildren(...members.map((m) => el("li", {}, m.household ? `${m.name} · ${m.household}` : m.name)));
  }

  function closeBranch() {
    const id = state.branch && state.branch.id;
    state.branch = null;
    $("branch-names-list").replaceChildren();
    $("branch-view").hidden = true;
    $("app").hidden = false;
    // Charts drawn while the page was away (a language switch, a resize)
    // take the width they have again.
    drawCharts();
    const row = [...$("rollup").querySelectorAll("tbody tr")].find((tr) => tr.dataset.tenant === id);
    if (row) row.querySelector("button")?.focus();
  }

  // ---- Language --------------------------------------------------------

  function applyLanguage() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    document.title = `Doorstep — ${t("app.title")}`;
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll("[data-i18n-label]")) node.setAttribute("aria-label", t(node.dataset.i18nLabel));
    $("lang").textContent = state.lang === "zh" ? "English" : "中文";
    $("lang").setAttribute("lang", state.lang === "zh" ? "en" : "zh-CN");
    showWho();
    if (state.view) {
      render();
    } else if (!$("app").hidden) {
      $("table-title").textContent = `${t("table.title")} · —`;
    }
    renderBranch();
  }

  function showWho() {
    $("who").textContent = state.me ? `${state.me.username} · ${t(`role.${state.me.role}`)}` : "";
  }

  // ---- Sessions, activation, password ------------------------------------

  const PASSWORDS = ["activate-password", "activate-confirm", "current-password", "new-password", "new-password-confirm"];

  // Typed secrets do not outlive the form they were typed for: on a shared
  // office PC the next person must find every field empty.
  function clearSecrets({ code = true } = {}) {
    for (const id of PASSWORDS) $(id).value = "";
    if (code) $("activate-code").value = "";
  }

  // One of the screens before login: "login" or "activate".
  function showLogin(screen = "login") {
    // A load or branch page still under way draws nothing for the next person.
    latestLoad += 1;
    clearSecrets();
    state.token = null;
    state.trail = [];
    state.shownTrail = [];
    state.me = null;
    state.branch = null;
    clearFigures();
    $("branch-names-list").replaceChildren();
    showWho();
    $("logout").hidden = true;
    $("change-password-open").hidden = true;
    $("change-password").hidden = true;
    $("app").hidden = true;
    $("branch-view").hidden = true;
    $("login").hidden = screen !== "login";
    $("activate").hidden = screen !== "activate";
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
      $("activate-error").textContent = t("err.mismatch");
      return;
    }
    const response = await fetch("/api/v1/activate", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ code: $("activate-code").value.trim(), username: $("activate-username").value.trim(), password }),
    }).catch(() => null);
    clearSecrets({ code: false });
    if (response && response.status === 202) {
      $("activate-status").textContent = t("activate.pending");
      return;
    }
    if (!response || !response.ok) {
      $("activate-error").textContent = await refusalText(response);
      return;
    }
    const { user } = await response.json();
    $("activate-code").value = "";
    if (await logIn(user.username, password)) return start();
    showLogin();
    $("username").value = user.username;
    $("login-error").textContent = t("activate.done");
  });

  $("password-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("password-error").textContent = "";
    $("password-status").textContent = "";
    const next = $("new-password").value;
    if (next !== $("new-password-confirm").value) {
      clearSecrets({ code: false });
      $("password-error").textContent = t("err.newMismatch");
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
      showLogin();
      $("login-error").textContent = t("err.session");
      return;
    }
    if (!response || !response.ok) {
      $("password-error").textContent = response && response.status === 403 ? t("err.wrongCurrent") : await refusalText(response);
      return;
    }
    const { ended_sessions: ended } = await response.json();
    $("change-password").hidden = true;
    $("app").hidden = false;
    $("status").textContent = t("password.changed", { n: ended });
  });

  async function logout() {
    const token = state.token;
    showLogin();
    if (token) await fetch("/api/v1/logout", { method: "POST", headers: { authorization: `Bearer ${token}` } }).catch(() => {});
  }

  function defaultPeriod(kind) {
    const now = new Date();
    const year = now.getFullYear();
    return { year: `${year}`, quarter: `${year}-Q${Math.floor(now.getMonth() / 3) + 1}`,
      month: `${year}-${String(now.getMonth() + 1).padStart(2, "0")}`, campaign: `${year}`, range: "" }[kind];
  }

  async function start() {
    const me = await api("/api/v1/me").then((r) => r.json()).catch(() => null);
    if (!me) return showLogin();
    state.me = me;
    clearFigures();
    showWho();
    $("logout").hidden = false;
    $("change-password-open").hidden = false;
    $("change-username").value = me.username;
    $("login").hidden = true;
    $("activate").hidden = true;
    $("app").hidden = false;
    $("period-value").value = defaultPeriod($("period-kind").value);
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
      $("login-error").textContent = response && response.status === 429 ? t("err.busy") : response ? t("err.login") : t("err.unreachable");
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
    $("branch-view").hidden = true;
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
    const kind = $("period-kind").value;
    $("period-to").hidden = kind !== "range";
    $("period-holiday").hidden = kind !== "campaign";
    $("period-value").type = kind === "range" ? "date" : "text";
    $("period-value").value = defaultPeriod(kind);
  });
  $("period-form").addEventListener("submit", (event) => { event.preventDefault(); load(); });
  $("download-csv").addEventListener("click", downloadCsv);
  $("print").addEventListener("click", () => window.print());
  $("logout").addEventListener("click", logout);
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    applyLanguage();
  });
  $("groups").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-group]");
    if (!button) return;
    state.group = button.dataset.group;
    if (state.view) renderTable(state.view.rollup);
  });
  $("branch-back").addEventListener("click", closeBranch);
  $("branch-names").addEventListener("click", showNames);
  // Charts are drawn to the width they have: again when it changes.
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(drawCharts, 150);
  });
  applyLanguage();
  route();
})();

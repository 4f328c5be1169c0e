// The signed-in frame: who am I, which tenant, the menu, the tenant switcher, sign out.
import { get, post } from "./api.js";
import { h, clear, banner, errorText } from "./ui.js";

const ROLE_LABELS = { admin: "administrator", user: "user", read_only: "read only", web_service: "web service" };
const STORE = "mailgate.tenant";

// Pages register a check here; the shell asks before anything navigates away.
let dirtyCheck = () => false;
export function setDirtyCheck(fn) { dirtyCheck = fn; }
export function isDirty() { return dirtyCheck(); }

window.addEventListener("beforeunload", (e) => {
  if (dirtyCheck()) { e.preventDefault(); e.returnValue = ""; }
});

// Keyboard focus never hides under the sticky header or save bar: scroll-padding covers most
// cases, but Chromium leaves a partly visible field where it is, so move it into the clear.
document.addEventListener("focusin", (e) => {
  const el = e.target;
  if (!(el instanceof Element) || el.closest(".savebar, .topbar, dialog")) return;
  const r = el.getBoundingClientRect();
  const bar = document.querySelector(".savebar")?.getBoundingClientRect();
  const top = document.querySelector(".topbar")?.getBoundingClientRect();
  if (bar && r.bottom > bar.top - 4 && r.top < bar.bottom) window.scrollBy(0, Math.min(r.bottom - bar.top + 16, r.top - (top?.bottom || 0) - 16));
  else if (top && r.top < top.bottom + 4 && r.bottom > 0) window.scrollBy(0, r.top - top.bottom - 16);
});

export function tenantUrl(path, tenant, extra = {}) {
  const q = new URLSearchParams({ tenant, ...extra });
  return `${path}?${q}`;
}

export async function boot() {
  const page = document.getElementById("page");
  let me, tenants;
  try {
    me = await get("/api/v1/auth/me");
    tenants = (await get("/api/v1/tenants")).items;
  } catch (err) {
    clear(page, banner("bad", errorText(err)));
    throw err;
  }
  const params = new URLSearchParams(location.search);
  const names = tenants.map((t) => t.name);
  let tenant = params.get("tenant") || localStorage.getItem(STORE) || "";
  if (!names.includes(tenant)) tenant = names.includes("home") && !Object.keys(me.roles).length ? "home" : (Object.keys(me.roles)[0] || names[0] || "");
  if (tenant) localStorage.setItem(STORE, tenant);
  const role = me.system_admin ? "admin" : me.roles[tenant] || null;
  const ctx = {
    me, tenants, tenant, role,
    systemAdmin: !!me.system_admin,
    isAdmin: role === "admin",
    canEditServers: role === "admin",
    canTest: role === "admin",
    canManageMessages: role === "admin" || role === "user",
    page: document.getElementById("main").dataset.page,
    item: document.getElementById("main").dataset.item || null,
    el: page,
  };

  document.getElementById("who").textContent = me.username;
  const note = document.getElementById("role-note");
  if (role) note.textContent = me.system_admin ? "System administrator" : `Your role in ${tenant}: ${ROLE_LABELS[role] || role}`;

  // Tenant switcher: a select when there is a choice, the name otherwise.
  if (tenants.length > 1) {
    const sel = document.getElementById("tenant-select");
    for (const t of tenants) {
      sel.append(h("option", { value: t.name, selected: t.name === tenant }, t.display_name && t.display_name !== t.name ? `${t.display_name} (${t.name})` : t.name));
    }
    sel.addEventListener("change", () => {
      if (dirtyCheck() && !window.confirm("You have unsaved changes. Leave without saving?")) {
        sel.value = tenant;
        return;
      }
      setDirtyCheck(() => false);
      localStorage.setItem(STORE, sel.value);
      location.assign(tenantUrl(`/ui/${ctx.page}`, sel.value));
    });
    document.getElementById("tenant-switch").hidden = false;
  } else if (tenant) {
    const single = document.getElementById("tenant-single");
    const t = tenants.find((x) => x.name === tenant);
    single.textContent = t?.display_name && t.display_name !== tenant ? `${t.display_name} (${tenant})` : `Tenant: ${tenant}`;
    single.title = `Tenant ${tenant}`;
    single.hidden = false;
  }

  // Menu: links keep the tenant; sections the role cannot use are hidden.
  document.querySelectorAll("[data-needs=admin]").forEach((e) => { e.hidden = role !== "admin"; });
  document.querySelectorAll("[data-needs=system_admin]").forEach((e) => { e.hidden = !me.system_admin; });
  document.querySelectorAll("a[data-nav]").forEach((a) => {
    if (tenant) a.href = tenantUrl(a.getAttribute("href"), tenant);
    if (a.dataset.nav === ctx.page) a.setAttribute("aria-current", "page");
  });
  const side = document.getElementById("sidebar");
  const toggle = document.getElementById("menu-toggle");
  toggle.addEventListener("click", () => {
    const open = side.classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    if (dirtyCheck() && !window.confirm("You have unsaved changes. Sign out anyway?")) return;
    setDirtyCheck(() => false);
    try { await post("/api/v1/auth/logout"); } catch { /* signed out either way */ }
    location.assign("/ui/login");
  });
  if (me.system_admin && ctx.page !== "system-email-server") systemServerNotice();
  page.removeAttribute("aria-busy");
  clear(page);
  return ctx;
}

// Without a system e-mail server, password reset links and token alerts go nowhere, silently
// for the person asking: say so to those who can set one up.
async function systemServerNotice() {
  try {
    await get("/api/v1/system/email-server", { signOutOn401: false });
  } catch (err) {
    if (err.status !== 404) return;
    const box = document.getElementById("notices");
    box?.append(banner("warn", h("strong", {}, "No system e-mail server. "),
      "Password reset links and OAuth2 alerts are not sent until one is set up. ",
      h("a", { href: "/ui/system-email-server" }, "Set up the system e-mail server")));
  }
}

// For pages that need a tenant role (most of them).
export function needTenant(ctx) {
  if (ctx.tenant && ctx.role) return true;
  clear(ctx.el, banner("info", "You have no role in any tenant yet. Ask a system administrator to give you one."));
  return false;
}

// Administration → Remote clients: agents inside a customer's network that deliver for us.
import { get, post, del, enc } from "../api.js";
import { h, clear, banner, toast, field, showErrors, clearErrors, fmtTime, badge, busy, errorText, confirmDialog, tokenDialog } from "../ui.js";
import { boot, needTenant } from "../shell.js";

const ctx = await boot();
if (needTenant(ctx)) {
  if (!ctx.isAdmin) clear(ctx.el, banner("info", "Only administrators of this tenant manage remote clients."));
  else await main();
}
document.getElementById("main").dataset.ready = "1";

async function main() {
  const base = `/api/v1/tenants/${enc(ctx.tenant)}/remote-clients`;
  const list = h("div", { class: "panel table-wrap" });
  let items;
  try {
    items = (await get(base)).items;
  } catch (err) {
    clear(ctx.el, banner(err.status === 404 ? "info" : "bad", err.status === 404 ? "Remote clients are not available on this installation yet." : errorText(err)));
    return;
  }
  const name = h("input", { type: "text", autocomplete: "off", placeholder: "e.g. plant-1" });
  const create = h("button", { type: "submit", class: "primary" }, "Create remote client");
  const form = h("form", { class: "panel", novalidate: true, "aria-labelledby": "new-rc" },
    h("h2", { id: "new-rc" }, "New remote client"),
    h("p", { class: "section-note" }, "Run the agent inside the customer's network with the environment variables MAILGATE_AGENT_URL (this mailgate's address) and MAILGATE_AGENT_TOKEN (the token shown once after creating), then start: mailgate agent. It connects out; no inbound port is needed."),
    h("div", { class: "grid" }, field("Name", name, { path: "name" }),
      h("div", { class: "field" }, h("span", { class: "label" }, "\u00a0"), h("div", { class: "actions" }, create))));
  clear(ctx.el, form, list);

  function render() {
    clear(list, h("h2", {}, "Remote clients"), items.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Connection", "Last seen", "Agent", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, items.map((c) => {
        const rm = h("button", { type: "button", class: "danger small", "aria-label": `Delete ${c.name}` }, "Delete");
        rm.addEventListener("click", async () => {
          if (!(await confirmDialog(`Delete "${c.name}"?`, "The agent with this token can no longer connect.", "Delete", true))) return;
          try { await del(`${base}/${enc(c.name)}`); toast(`Deleted ${c.name}`); await load(); } catch (err) { toast(errorText(err), "bad"); }
        });
        return h("tr", {}, h("td", {}, c.name), h("td", {}, c.connected ? badge("ok", "connected") : badge("", "not connected")), h("td", {}, fmtTime(c.last_seen_at)),
          h("td", {}, c.agent_version ? `mailgate ${c.agent_version}` : "—", c.agent_address ? h("div", { class: "muted mono" }, c.agent_address) : null),
          h("td", { class: "num" }, rm));
      }))) : h("p", { class: "empty" }, "No remote clients yet."));
  }
  async function load() { items = (await get(base)).items; render(); }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    busy(create, true, "Creating…");
    try {
      const r = await post(base, { name: name.value.trim() });
      name.value = "";
      await load();
      busy(create, false);
      toast(`Created ${r.name}`);
      await tokenDialog(`Remote client "${r.name}"`, r.token, "Give this token to the agent in the environment variable MAILGATE_AGENT_TOKEN (not with --token: other users of that machine can read command lines through ps). It is shown only now.");
    } catch (err) {
      busy(create, false);
      const rest = showErrors(form, err.errors);
      if (rest.length || !err.errors.length) toast(errorText(err), "bad", 6000);
    }
  });
  render();
}

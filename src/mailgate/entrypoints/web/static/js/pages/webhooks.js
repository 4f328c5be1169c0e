// Administration → Webhooks (README "Webhooks"): endpoints that hear about the tenant's mail.
// Create (the signing secret is shown once), enable or pause, send a test event, read the
// deliveries log, delete.
import { get, post, patch, del, enc } from "../api.js";
import { h, clear, banner, toast, field, showErrors, clearErrors, fmtTime, badge, busy, errorText, confirmDialog, tokenDialog } from "../ui.js";
import { boot, needTenant } from "../shell.js";

const ctx = await boot();
const EVENTS = {
  "message.sent": "Sent",
  "message.deferred": "Deferred (will retry)",
  "message.failed": "Failed",
  "message.held": "Held",
  "message.cancelled": "Cancelled",
  "server.needs_reauthorization": "Server needs re-authorization",
  "server.paused": "Server paused (provider limit)",
};

if (needTenant(ctx)) {
  if (!ctx.isAdmin) clear(ctx.el, banner("info", "Only administrators of this tenant manage webhooks."));
  else await main();
}
document.getElementById("main").dataset.ready = "1";

async function main() {
  const base = `/api/v1/tenants/${enc(ctx.tenant)}/webhooks`;
  const url = h("input", { type: "url", autocomplete: "off", placeholder: "https://erp.example.com/mailgate-events", inputmode: "url" });
  const boxes = Object.entries(EVENTS).map(([value, label]) => h("label", { class: "check" }, h("input", { type: "checkbox", value, checked: true }), label));
  const events = h("fieldset", { class: "field wide event-choice", dataset: { fieldPath: "events" } },
    h("legend", {}, "Events"), h("div", { class: "event-grid" }, boxes),
    h("p", { class: "field-error", dataset: { errorFor: "events" } }));
  const create = h("button", { type: "submit", class: "primary" }, "Create webhook");
  const form = h("form", { class: "panel", novalidate: true, "aria-labelledby": "new-hook" },
    h("h2", { id: "new-hook" }, "New webhook"),
    h("p", { class: "section-note" }, "mailgate POSTs a signed JSON event (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature) to this URL for every change you choose; anything but a 2xx answer is retried for 24 hours."),
    h("div", { class: "grid" }, field("URL", url, { path: "url", wide: true, help: "http or https; loopback and private addresses are refused unless the installation allows them." }), events),
    h("div", { class: "actions" }, create));
  const list = h("div", { class: "panel table-wrap", id: "webhook-list" });
  const log = h("section", { class: "panel", id: "deliveries", hidden: true, "aria-labelledby": "deliveries-head" });
  clear(ctx.el, form, list, log);

  async function load() {
    const hooks = (await get(base)).items;
    clear(list, h("h2", {}, "Webhooks"), hooks.length ? h("table", { class: "cards webhooks" },
      h("thead", {}, h("tr", {}, ["URL", "Events", "Enabled", "Waiting", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, hooks.map(row)))
      : h("p", { class: "empty" }, "No webhooks yet."));
  }

  function row(w) {
    const enabled = h("input", { type: "checkbox", checked: w.enabled, "aria-label": `Enabled: ${w.url}` });
    enabled.addEventListener("change", async () => {
      try {
        await patch(`${base}/${enc(w.id)}`, { enabled: enabled.checked });
        toast(enabled.checked ? "Webhook enabled" : "Webhook paused: no new events; those already waiting are kept for 24 hours");
      } catch (err) { enabled.checked = !enabled.checked; toast(errorText(err), "bad"); }
    });
    const test = h("button", { type: "button", class: "small", dataset: { action: "test" } }, "Send test");
    test.addEventListener("click", async () => {
      busy(test, true, "Sending…");
      try {
        const r = await post(`${base}/${enc(w.id)}/test`);
        if (r.ok) toast(`Test event delivered: HTTP ${r.status_code} in ${r.ms} ms`);
        else toast(`Test event not delivered: ${r.error || `HTTP ${r.status_code}`}`, "bad", 8000);
        if (!log.hidden && log.dataset.hook === w.id) await deliveries(w);
      } catch (err) { toast(errorText(err), "bad"); }
      busy(test, false);
    });
    const edit = h("button", { type: "button", class: "small", "aria-label": `Edit ${w.url}` }, "Edit");
    edit.addEventListener("click", () => editDialog(w));
    const show = h("button", { type: "button", class: "small", dataset: { action: "deliveries" } }, "Deliveries");
    show.addEventListener("click", () => deliveries(w).catch((err) => toast(errorText(err), "bad")));
    const remove = h("button", { type: "button", class: "danger small", "aria-label": `Delete ${w.url}` }, "Delete");
    remove.addEventListener("click", async () => {
      if (!(await confirmDialog("Delete this webhook?", `${w.url} gets no more events; the ones still waiting are dropped.`, "Delete", true))) return;
      try { await del(`${base}/${enc(w.id)}`); toast("Webhook deleted"); if (log.dataset.hook === w.id) log.hidden = true; await load(); } catch (err) { toast(errorText(err), "bad"); }
    });
    const waiting = w.failing_since
      ? h("span", {}, badge("warn", `${w.pending} waiting`), h("div", { class: "muted" }, `failing since ${fmtTime(w.failing_since)}`))
      : w.pending ? badge("queued", `${w.pending} waiting`) : h("span", { class: "muted" }, "none");
    return h("tr", { dataset: { id: w.id } },
      h("td", { "data-label": "URL", class: "url" }, h("code", {}, w.url), w.description ? h("div", { class: "muted" }, w.description) : null),
      h("td", { "data-label": "Events" }, h("div", { class: "event-list" }, w.events.map((e) => h("span", { class: "badge event" }, e)))),
      h("td", { "data-label": "Enabled" }, h("label", { class: "check" }, enabled, w.enabled ? "on" : "paused")),
      h("td", { "data-label": "Waiting" }, waiting),
      h("td", { class: "num", "data-label": "" }, h("div", { class: "actions" }, test, show, edit, remove)));
  }

  // Change the URL or the events (the secret stays; delete and create again for a new one).
  function editDialog(w) {
    const u = h("input", { type: "url", value: w.url, autocomplete: "off" });
    const checks = Object.entries(EVENTS).map(([value, label]) => h("label", { class: "check" }, h("input", { type: "checkbox", value, checked: w.events.includes(value) }), label));
    const save = h("button", { type: "submit", class: "primary" }, "Save");
    const cancel = h("button", { type: "button" }, "Cancel");
    const body = h("form", { novalidate: true },
      field("URL", u, { path: "url", wide: true }),
      h("fieldset", { class: "field wide event-choice", dataset: { fieldPath: "events" } }, h("legend", {}, "Events"), h("div", { class: "event-grid" }, checks), h("p", { class: "field-error", dataset: { errorFor: "events" } })),
      h("div", { class: "actions" }, cancel, save));
    const dlg = h("dialog", { "aria-labelledby": "edit-hook-title", class: "wide-dialog" }, h("h2", { id: "edit-hook-title" }, "Edit webhook"), body);
    document.body.append(dlg);
    const close = () => { dlg.close(); dlg.remove(); };
    cancel.addEventListener("click", close);
    dlg.addEventListener("cancel", (e) => { e.preventDefault(); close(); });
    body.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearErrors(body);
      busy(save, true, "Saving…");
      try {
        const events = checks.map((c) => c.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
        await patch(`${base}/${enc(w.id)}`, { url: u.value.trim(), events });
        close();
        toast("Webhook saved");
        await load();
      } catch (err) {
        busy(save, false);
        const rest = showErrors(body, err.errors);
        if (rest.length || !err.errors.length) toast(errorText(err), "bad", 6000);
      }
    });
    dlg.showModal();
    u.focus();
  }

  async function deliveries(w, cursor = null, items = []) {
    const q = new URLSearchParams({ limit: "50" });
    if (cursor) q.set("cursor", cursor);
    const page = await get(`${base}/${enc(w.id)}/deliveries?${q}`);
    items = items.concat(page.items);
    const more = h("button", { type: "button", hidden: !page.next_cursor }, "Load more");
    more.addEventListener("click", () => deliveries(w, page.next_cursor, items).catch((err) => toast(errorText(err), "bad")));
    log.dataset.hook = w.id;
    clear(log, h("h2", { id: "deliveries-head" }, "Deliveries to ", h("code", {}, w.url)),
      items.length ? h("div", { class: "table-wrap" }, h("table", { class: "cards deliveries" },
        h("thead", {}, h("tr", {}, ["Time", "Event", "Answer", "Took", "Event status"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, items.map((d) => h("tr", { dataset: { ok: String(d.ok) } },
          h("td", { class: "nowrap", "data-label": "Time" }, fmtTime(d.at)),
          h("td", { "data-label": "Event" }, d.type, h("div", { class: "muted mono" }, d.event_id)),
          h("td", { "data-label": "Answer" }, badge(d.ok ? "ok" : "bad", d.status_code != null ? `HTTP ${d.status_code}` : "no answer"), d.error ? h("div", { class: "muted" }, d.error) : null),
          h("td", { class: "num", "data-label": "Took" }, `${d.ms} ms`),
          h("td", { "data-label": "Event status" }, badge(d.event_status === "delivered" ? "ok" : d.event_status === "failed" ? "bad" : "warn", d.event_status === "pending" ? "will retry" : d.event_status)))))))
        : h("p", { class: "empty" }, "No delivery attempts yet. Events are sent by the worker processes; \"Send test\" sends one now."),
      more);
    log.hidden = false;
    log.scrollIntoView({ block: "nearest" });
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    busy(create, true, "Creating…");
    try {
      const chosen = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
      const r = await post(base, { url: url.value.trim(), events: chosen });
      url.value = "";
      await load();
      busy(create, false);
      toast("Webhook created");
      await tokenDialog("Signing secret", r.secret, "Your receiver verifies every request with this secret (any Standard Webhooks library does it). It is shown only now: store it with the receiver's configuration.");
    } catch (err) {
      busy(create, false);
      const rest = showErrors(form, err.errors);
      if (rest.length || !err.errors.length) toast(errorText(err), "bad", 6000);
    }
  });
  await load();
}

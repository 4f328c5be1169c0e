// Small DOM helpers shared by the pages: element builder, toasts, dialogs, field errors.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function toast(message, kind = "ok", ms = 4000) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const t = h("div", { class: `toast ${kind}` }, message);
  box.append(t);
  setTimeout(() => t.remove(), ms);
}

export function clearToasts() {
  document.getElementById("toasts")?.replaceChildren();
}

// Ask for one of several values: resolves to the chosen one, or null on Cancel.
export function choiceDialog(title, text, label, options, okLabel = "OK") {
  return new Promise((resolve) => {
    const id = nextId("choice");
    const sel = h("select", { id }, options.map((o) => h("option", { value: o }, o)));
    const ok = h("button", { class: "danger", type: "button" }, okLabel);
    const cancel = h("button", { type: "button" }, "Cancel");
    const dlg = h("dialog", { "aria-labelledby": `${id}-title` },
      h("h2", { id: `${id}-title` }, title), h("p", {}, text),
      h("div", { class: "field" }, h("label", { for: id }, label), sel),
      h("div", { class: "actions" }, cancel, ok));
    document.body.append(dlg);
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    ok.addEventListener("click", () => done(sel.value));
    cancel.addEventListener("click", () => done(null));
    dlg.addEventListener("cancel", (e) => { e.preventDefault(); done(null); });
    dlg.showModal();
    sel.focus();
  });
}

export function banner(kind, ...content) {
  return h("div", { class: `banner ${kind}`, role: kind === "bad" ? "alert" : "status" }, h("div", { class: "grow" }, ...content));
}

export function fmtTime(value) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return value;
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function badge(value, label) {
  return h("span", { class: `badge ${value || ""}` }, label || String(value || "—").replaceAll("_", " "));
}

let uid = 0;
export const nextId = (p = "f") => `${p}-${++uid}`;

// A labelled field. `input` is an element; the error slot is keyed by a dotted API path.
export function field(label, input, { help, path, wide, id } = {}) {
  const inputId = input.id || id || nextId();
  input.id = inputId;
  const errId = `${inputId}-err`;
  const err = h("p", { class: "field-error", id: errId, dataset: { errorFor: path || "" } });
  if (path) input.setAttribute("aria-describedby", errId);
  return h("div", { class: `field${wide ? " wide" : ""}`, dataset: { fieldPath: path || "" } },
    h("label", { for: inputId }, label), input, help ? h("span", { class: "help" }, help) : null, err);
}

// Show problem+json errors next to their fields; returns the errors that found no field.
export function showErrors(root, errors) {
  clearErrors(root);
  const orphans = [];
  for (const e of errors || []) {
    const slot = findSlot(root, e.field || "");
    if (slot) {
      slot.textContent = e.message;
      const f = slot.closest(".field");
      f?.classList.add("invalid");
      f?.querySelectorAll("input, select, textarea").forEach((i) => i.setAttribute("aria-invalid", "true"));
    } else orphans.push(e);
  }
  const first = root.querySelector(".field.invalid input, .field.invalid select, .field.invalid textarea");
  if (first) {
    first.closest("details")?.setAttribute("open", "");
    first.focus();
  }
  return orphans;
}

function findSlot(root, path) {
  // "message_defaults.cc.2" falls back to "message_defaults.cc".
  let p = path;
  while (p) {
    // Two inputs may share a path (the user name of password and OAuth2): use the shown one.
    const slots = [...root.querySelectorAll(`[data-error-for="${CSS.escape(p)}"]`)];
    const slot = slots.find((s) => !s.closest("[hidden]")) || slots[0];
    if (slot) return slot;
    p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "";
  }
  return null;
}

export function clearErrors(root) {
  root.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
  root.querySelectorAll(".field.invalid").forEach((e) => e.classList.remove("invalid"));
  root.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
}

export function confirmDialog(title, text, okLabel = "OK", danger = false) {
  return new Promise((resolve) => {
    const ok = h("button", { class: danger ? "danger" : "primary", type: "button", value: "ok" }, okLabel);
    const cancel = h("button", { type: "button" }, "Cancel");
    const dlg = h("dialog", { "aria-labelledby": "dlg-title" },
      h("h2", { id: "dlg-title" }, title), h("p", {}, text), h("div", { class: "actions" }, cancel, ok));
    document.body.append(dlg);
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    ok.addEventListener("click", () => done(true));
    cancel.addEventListener("click", () => done(false));
    dlg.addEventListener("cancel", (e) => { e.preventDefault(); done(false); });
    dlg.showModal();
    cancel.focus();
  });
}

// A dialog showing a token once, with a copy button.
export function tokenDialog(title, token, note) {
  const input = h("input", { type: "text", readonly: true, value: token, "aria-label": "Token", id: "token-value" });
  const copy = h("button", { type: "button", class: "primary" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(token);
    } catch {
      input.select();
      document.execCommand("copy");
    }
    copy.textContent = "Copied";
    toast("Token copied to the clipboard");
  });
  const close = h("button", { type: "button" }, "I have stored it");
  const dlg = h("dialog", { "aria-labelledby": "tok-title" },
    h("h2", { id: "tok-title" }, title),
    h("p", {}, note || "This token is shown only now. Store it somewhere safe: mailgate keeps only a hash of it."),
    h("div", { class: "token-box" }, input, copy),
    h("div", { class: "actions" }, close));
  document.body.append(dlg);
  return new Promise((resolve) => {
    close.addEventListener("click", () => { dlg.close(); dlg.remove(); resolve(); });
    dlg.showModal();
    input.select();
  });
}

export function errorText(err) {
  if (!err) return "unknown error";
  const extra = (err.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
  return extra && !String(err.message).includes(extra) ? `${err.message} (${extra})` : err.message;
}

export function busy(button, on, label) {
  if (on) {
    button.dataset.label = button.textContent;
    button.disabled = true;
    button.replaceChildren(h("span", { class: "spinner", "aria-hidden": "true" }), label || button.textContent);
  } else {
    button.disabled = false;
    button.textContent = button.dataset.label || button.textContent;
  }
}

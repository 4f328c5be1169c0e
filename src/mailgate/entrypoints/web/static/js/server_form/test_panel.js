// The server form's test panel: send a test e-mail (or a dry run) with the settings on screen,
// show each step as the server streams it (NDJSON), then the result and the SMTP transcript.
import { postStream } from "../api.js";
import { h, clear, field, showErrors, clearErrors, banner, badge, busy, errorText, fmtTime } from "../ui.js";

const SMTP_STEPS = ["resolve", "connect", "tls", "ehlo", "auth", "mail_from", "rcpt_to", "data"];
const API_STEPS = ["token", "send"]; // Graph and the Gmail API: get a token, then send

export class TestPanel {
  /** form: the ServerForm under test (its options: canTest, testTo, isNew, apiBase, collectionBase). */
  constructor(form) {
    this.form = form;
    const to = h("input", { type: "email", placeholder: "you@example.com", autocomplete: "email" });
    to.value = form.o.testTo || "";
    this.to = to;
    const send = h("button", { type: "button", class: "primary" }, "Send test e-mail");
    const dry = h("button", { type: "button" }, "Dry run");
    this.out = h("div", { class: "test-result", "aria-live": "polite" });
    this.last = h("p", { class: "last-test" });
    this.showLast(form.o.value.last_test);
    send.addEventListener("click", () => this.run("send", send));
    dry.addEventListener("click", () => this.run("dry_run", dry));
    this.buttons = [send, dry];
    this.el = !form.o.canTest ? h("div") : form.section("Send test e-mail", "Connects with these settings and reports each step. A dry run stops before the message is sent.",
      this.last,
      h("div", { class: "test-row" }, field("Send test e-mail to", to, { path: "to" }), h("div", { class: "actions" }, send, dry)),
      this.out);
  }

  async run(mode, button) {
    const form = this.form;
    clearErrors(this.out.parentElement);
    const to = this.to.value.trim();
    if (mode === "send" && !to && !form.v.message_defaults?.from_address) {
      showErrors(this.out.parentElement, [{ field: "to", message: "enter an address to send the test e-mail to" }]);
      return;
    }
    // A new configuration is not saved yet: it travels with the request (`config`), under
    // the name it would get.
    const path = form.o.isNew && form.o.collectionBase
      ? `${form.o.collectionBase}/${encodeURIComponent(form.name || "new")}/test`
      : `${form.o.apiBase}/test`;
    const all = form.viaApi ? API_STEPS : SMTP_STEPS;
    const steps = mode === "dry_run" ? all.slice(0, -1) : all;
    const list = h("ol", { class: "steps", "aria-label": "Test steps" }, steps.map((s, i) => h("li", { class: "pending", dataset: { step: s } },
      h("span", { class: "name" }, s), h("span", { class: "result" }, i === 0 ? h("span", { class: "spinner", "aria-label": "running" }) : "waiting"), h("span", { class: "detail" }), h("span", { class: "ms" }))));
    clear(this.out, list);
    list.scrollIntoView({ block: "nearest" }); // the steps fill in as they complete: keep them in sight
    this.buttons.forEach((b) => { b.disabled = true; });
    busy(button, true, mode === "send" ? "Sending…" : "Testing…");
    const body = { mode };
    if (to) body.to = to;
    if (form.isDirty() || form.o.isNew) body.config = form.body();
    try {
      let result = null;
      await postStream(path, body, (e) => {
        if (e.event === "step") this.renderStep(list, e.step);
        else if (e.event === "result") result = e.result;
        else if (e.event === "error") throw new Error(e.detail || "the test stopped unexpectedly");
      });
      if (result) this.renderResult(result, list);
      if (result && !body.config) form.o.onTested?.(); // the saved settings: their status changed
    } catch (err) {
      clear(this.out, banner("bad", err.status === 422 && body.config ? "The settings are not valid yet; see the marked fields. " : "", errorText(err)));
      if (err.status === 422) showErrors(form.el, (err.errors || []).map((e) => ({ ...e, field: e.field.replace(/^config\./, "") })));
    }
    this.buttons.forEach((b) => busy(b, false));
  }

  // The last test of the saved settings (kept by mailgate, whoever ran it).
  showLast(t) {
    this.last.hidden = !t;
    if (!t) return;
    clear(this.last, h("strong", {}, "Last test: "), badge(t.ok ? "ok" : "bad", t.ok ? "passed" : "failed"), ` ${t.mode === "dry_run" ? "dry run" : "send"} · ${fmtTime(t.at)}`,
      t.ok ? null : h("span", { class: "muted" }, ` · ${t.step}: ${t.detail || ""}`));
  }

  // One step finished: show it, and move the spinner to the next one.
  renderStep(list, s) {
    const items = [...list.children];
    const i = items.findIndex((li) => li.dataset.step === s.step);
    if (i < 0) return;
    const li = items[i];
    const [, result, detail, ms] = li.children;
    li.classList.remove("pending");
    li.classList.add(s.ok ? "ok" : "failed");
    clear(result, badge(s.ok ? "ok" : "bad", s.ok ? "ok" : "failed"));
    detail.textContent = s.detail || "";
    ms.textContent = s.ms != null ? `${s.ms} ms` : "";
    const next = items[i + 1];
    if (s.ok && next && next.classList.contains("pending")) clear(next.children[1], h("span", { class: "spinner", "aria-label": "running" }));
  }

  // The final result settles every step (steps never reached show "skipped").
  renderResult(r, list) {
    const byName = Object.fromEntries((r.steps || []).map((s) => [s.step, s]));
    for (const li of list.children) {
      const s = byName[li.dataset.step];
      li.classList.remove("pending");
      const [, result, detail, ms] = li.children;
      if (s) {
        clear(result, badge(s.ok ? "ok" : "bad", s.ok ? "ok" : "failed"));
        detail.textContent = s.detail || "";
        ms.textContent = s.ms != null ? `${s.ms} ms` : "";
        li.classList.add(s.ok ? "ok" : "failed");
      } else {
        clear(result, h("span", { class: "muted" }, "skipped"));
      }
    }
    const transcript = (r.transcript || []).map((l) => (typeof l === "string" ? l : `${l.direction || l.dir || ""} ${l.line || l.text || JSON.stringify(l)}`)).join("\n");
    this.out.append(h("div", {},
      r.ok ? banner("ok", h("strong", {}, "Test passed. "), this.form.viaApi
        ? (byName.send ? "The provider accepted the test e-mail." : "mailgate got a token from the provider; a dry run sends nothing.")
        : (r.mode === "dry_run" || !byName.data ? "The server accepted the connection, login and recipients." : "The test e-mail was accepted by the server."))
        : banner("bad", h("strong", {}, "Test failed. "), r.hint || "See the failed step above."),
      transcript ? h("details", { class: "transcript" }, h("summary", {}, this.form.viaApi ? "HTTP transcript (tokens redacted)" : "SMTP transcript (credentials redacted)"), h("pre", {}, transcript)) : null));
  }
}

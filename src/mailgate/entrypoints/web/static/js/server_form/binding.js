// Form binding: inputs tied to dotted paths of a config value (the API's JSON), so a
// problem+json `errors[].field` lands next to the input it names. The server form builds on
// this, and its panels (OAuth2, test) use the same field builders.
import { post } from "../api.js";
import { h, clear, field, badge, fmtTime, errorText, nextId } from "../ui.js";

export const getPath = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) o = o[k] ??= {};
  o[keys.at(-1)] = value;
}

const CONVERT = {
  text: { toInput: (v) => v ?? "", fromInput: (s) => (s.trim() === "" ? null : s.trim()) },
  raw: { toInput: (v) => v ?? "", fromInput: (s) => (s.trim() === "" ? null : s) },
  int: { toInput: (v) => v ?? "", fromInput: (s) => (s.trim() === "" ? null : Number(s)) },
  list: { toInput: (v) => (v || []).join(", "), fromInput: (s) => s.split(/[,;\n]/).map((x) => x.trim()).filter(Boolean) },
  headers: {
    toInput: (v) => Object.entries(v || {}).map(([k, x]) => `${k}: ${x}`).join("\n"),
    fromInput: (s) => Object.fromEntries(s.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
      const i = l.indexOf(":");
      return i < 0 ? [l, ""] : [l.slice(0, i).trim(), l.slice(i + 1).trim()];
    })),
  },
};

// Holds the edited copy of the value (`v`) and the write-only secrets typed so far; every
// edit calls `changed(path)`, which the form overrides.
export class BoundForm {
  /** opts: value, canEdit (and whatever the subclass needs). */
  constructor(opts) {
    this.o = opts;
    this.v = structuredClone(opts.value);
    this.secrets = {};
    this.inputs = [];
  }

  changed() {}

  // Set a value from code (a preset): the model and every input bound to the path.
  setValue(path, value) {
    setPath(this.v, path, value);
    for (const input of this.inputs.filter((i) => i.name === path)) {
      const conv = CONVERT[input.dataset.kind] || null;
      if (input.type === "checkbox") input.checked = !!value;
      else input.value = conv ? conv.toInput(value) : value ?? "";
    }
  }

  bind(path, input, kind = "text") {
    const conv = CONVERT[kind] || null;
    const isCheck = input.type === "checkbox";
    const value = getPath(this.v, path);
    if (isCheck) input.checked = !!value;
    else input.value = conv ? conv.toInput(value) : value ?? "";
    input.disabled = !this.o.canEdit;
    input.name = path;
    input.dataset.kind = kind;
    const ev = input.tagName === "SELECT" || isCheck ? "change" : "input";
    input.addEventListener(ev, () => {
      setPath(this.v, path, isCheck ? input.checked : conv ? conv.fromInput(input.value) : input.value);
      this.changed(path);
    });
    this.inputs.push(input);
    return input;
  }

  text(label, path, opts = {}) {
    const input = h("input", { type: opts.type || "text", placeholder: opts.placeholder, autocomplete: "off", spellcheck: "false", inputmode: opts.inputmode });
    return field(label, this.bind(path, input, opts.kind || "text"), { path, help: opts.help, wide: opts.wide });
  }

  select(label, path, options, opts = {}) {
    const sel = h("select", {}, Object.entries(options).map(([v, l]) => h("option", { value: v }, l)));
    return field(label, this.bind(path, sel, "raw"), { path, help: opts.help, wide: opts.wide });
  }

  check(label, path, help) {
    const input = h("input", { type: "checkbox", id: nextId("chk") });
    this.bind(path, input);
    const err = h("p", { class: "field-error", dataset: { errorFor: path } });
    return h("div", { class: "field", dataset: { fieldPath: path } },
      h("label", { class: "check", for: input.id }, input, label), help ? h("span", { class: "help" }, help) : null, err);
  }

  // A write-only secret: "set" with a change action, or an input. Never a value.
  // multiline: a PEM text area with file upload (a password input would drop line breaks).
  secret(label, path, setFlag, help, { multiline = false } = {}) {
    const wrap = h("div", { class: "field", dataset: { fieldPath: path } });
    const err = h("p", { class: "field-error", dataset: { errorFor: path } });
    const id = nextId("secret");
    const render = () => {
      const isSet = !!getPath(this.v, setFlag);
      const changing = path in this.secrets;
      if (isSet && !changing) {
        const change = h("button", { type: "button", class: "small", disabled: !this.o.canEdit }, "Change");
        change.addEventListener("click", () => { this.secrets[path] = ""; render(); wrap.querySelector("input")?.focus(); this.changed(path); });
        clear(wrap, h("span", { class: "label", id }, label), h("div", { class: "secret-set", "aria-labelledby": id }, badge("ok", "set"), h("span", { class: "muted" }, "stored encrypted"), this.o.canEdit ? change : null), err);
      } else {
        const input = multiline
          ? h("textarea", { class: "pem secret", id, name: path, disabled: !this.o.canEdit, spellcheck: "false", autocomplete: "off", placeholder: "-----BEGIN PRIVATE KEY-----" })
          : h("input", { type: "password", id, autocomplete: "new-password", name: path, disabled: !this.o.canEdit, placeholder: isSet ? "new value" : "" });
        input.value = this.secrets[path] || "";
        input.addEventListener("input", () => { this.secrets[path] = input.value; this.changed(path); });
        const keep = isSet ? h("button", { type: "button", class: "link" }, "keep the stored value") : null;
        keep?.addEventListener("click", () => { delete this.secrets[path]; render(); this.changed(path); });
        let upload = null;
        if (multiline && this.o.canEdit) {
          const file = h("input", { type: "file", accept: ".pem,.key,.txt", hidden: true, "aria-label": `${label}: file` });
          const button = h("button", { type: "button", class: "small" }, "Upload key file…");
          button.addEventListener("click", () => file.click());
          file.addEventListener("change", async () => {
            const f = file.files[0];
            if (!f) return;
            input.value = await f.text();
            file.value = "";
            input.dispatchEvent(new Event("input"));
          });
          upload = h("div", { class: "actions" }, button, file);
        }
        clear(wrap, h("label", { for: id }, label), input, help || keep ? h("span", { class: "help" }, help || "", keep ? " " : "", keep) : null, upload, err);
      }
    };
    render();
    return wrap;
  }

  pem(label, path, help) {
    const ta = h("textarea", { class: "pem", placeholder: "-----BEGIN CERTIFICATE-----", spellcheck: "false" });
    const info = h("div", { class: "cert-info", hidden: true, "aria-live": "polite" });
    const fileId = nextId("file");
    const file = h("input", { type: "file", id: fileId, accept: ".pem,.crt,.cer,.txt", hidden: true });
    const upload = h("button", { type: "button", class: "small", disabled: !this.o.canEdit }, "Upload PEM file…");
    upload.addEventListener("click", () => file.click());
    file.addEventListener("change", async () => {
      const f = file.files[0];
      if (!f) return;
      ta.value = await f.text();
      ta.dispatchEvent(new Event("input"));
      file.value = "";
    });
    const f = field(label, this.bind(path, ta, "raw"), { path, help: this.o.canEdit ? help : null, wide: true });
    if (!this.o.canEdit) ta.placeholder = "none";
    if (this.o.canEdit) f.append(h("div", { class: "actions" }, upload, file));
    f.append(info);
    let timer;
    const inspect = async () => {
      const pem = ta.value.trim();
      if (!pem) { info.hidden = true; return; }
      try {
        const r = await post("/api/v1/certificates/inspect", { pem });
        info.className = "cert-info";
        clear(info, r.certificates.map((c) => h("div", {},
          h("strong", {}, c.subject), c.self_signed ? " (self-signed)" : ` · issued by ${c.issuer}`, h("br"),
          c.expired ? badge("bad", "expired") : badge("ok", "valid"), ` until ${fmtTime(c.not_after)}`)));
      } catch (err) {
        info.className = "cert-info bad";
        clear(info, err.errors?.[0]?.message || errorText(err));
      }
      info.hidden = false;
    };
    ta.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(inspect, 400); });
    if (ta.value.trim()) inspect();
    return f;
  }

  section(title, note, ...content) {
    const id = nextId("sec");
    return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), note ? h("p", { class: "section-note" }, note) : null, ...content);
  }
}

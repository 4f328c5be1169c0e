// Sign in, forgot password, choose a new password.
import { api, post } from "../api.js";
import { h, clear, banner, showErrors, busy, errorText } from "../ui.js";

const main = document.getElementById("main");
const bannerBox = document.getElementById("banner");
const params = new URLSearchParams(location.search);
const say = (kind, text) => clear(bannerBox, banner(kind, text));

if (params.get("reset") === "ok") say("ok", "Your password was changed. Sign in with the new password.");
if (params.get("password") === "changed") say("ok", "Your password was changed and every session ended. Sign in with the new password.");
if (params.get("expired")) say("info", "Your session ended. Sign in again.");

const login = document.getElementById("login-form");
if (login) {
  login.addEventListener("submit", async (e) => {
    e.preventDefault();
    const btn = login.querySelector("button[type=submit]");
    const username = login.username.value.trim();
    const password = login.password.value;
    if (!username || !password) { say("bad", "Enter your user name and password."); return; }
    busy(btn, true, "Signing in…");
    try {
      await api("POST", "/api/v1/auth/login", { username, password }, { signOutOn401: false });
      const next = params.get("next");
      location.assign(next && next.startsWith("/ui/") && !next.startsWith("//") ? next : "/ui/");
    } catch (err) {
      busy(btn, false);
      say("bad", err.status === 401 ? "Wrong user name or password." : errorText(err));
      login.password.value = "";
      login.password.focus();
    }
  });
}

const forgot = document.getElementById("forgot-form");
if (forgot) {
  forgot.addEventListener("submit", async (e) => {
    e.preventDefault();
    const username = forgot.username.value.trim();
    if (!username) { say("bad", "Enter your user name."); return; }
    const btn = forgot.querySelector("button[type=submit]");
    busy(btn, true, "Sending…");
    try {
      await post("/api/v1/auth/password-reset", { username });
      clear(forgot, banner("ok", "If that account exists and has an e-mail address, a reset link is on its way. Check your inbox; the link works for one hour."));
      clear(bannerBox);
    } catch (err) {
      busy(btn, false);
      say("bad", errorText(err));
    }
  });
}

const reset = document.getElementById("reset-form");
if (reset) {
  const token = params.get("token") || "";
  if (!token) say("bad", "This page needs the link from the reset e-mail.");
  reset.addEventListener("submit", async (e) => {
    e.preventDefault();
    const password = reset.password.value;
    if (password !== reset.password2.value) {
      showErrors(reset, [{ field: "password2", message: "the two passwords differ" }]);
      return;
    }
    const btn = reset.querySelector("button[type=submit]");
    busy(btn, true, "Saving…");
    try {
      await post("/api/v1/auth/password-reset/confirm", { token, password });
      location.assign("/ui/login?reset=ok");
    } catch (err) {
      busy(btn, false);
      const rest = showErrors(reset, err.errors);
      if (rest.length || !err.errors.length) say("bad", rest.length ? rest.map((r) => r.message).join("; ") : errorText(err));
      else clear(bannerBox);
    }
  });
}
main.dataset.ready = "1";

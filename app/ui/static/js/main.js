// The dashboard's shell: sign-in, the hash router (#/jobs, #/jobs/<id>, ...) and live refresh of the page shown.

import { ApiError, call, key } from "./api.js";
import { clear, h } from "./dom.js";
import { pages } from "./views.js";

const main = document.getElementById("main");
const alertBox = document.getElementById("alert");
let current = null; // the page shown: {abort: AbortController}

export function showAlert(text) {
  alertBox.textContent = text || "";
  alertBox.hidden = !text;
}

function signedIn(on) {
  document.getElementById("nav").hidden = !on;
  document.getElementById("who").hidden = !on;
  const k = key.get() || "";
  document.getElementById("who-key").textContent = on ? `key …${k.slice(-4)}` : "";
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(qs || "") };
}

function signIn(message) {
  key.clear();
  signedIn(false);
  stop();
  showAlert("");
  const input = h("input", { type: "password", id: "api-key", name: "key", autocomplete: "off", required: true,
                             placeholder: "llmos_…", spellcheck: "false" });
  const error = h("p", { class: "error", id: "sign-in-error", role: "alert" });
  if (message) error.textContent = message;
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h("form", { class: "card sign-in", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key (llmos keys create). It is kept in this tab only (sessionStorage)."),
    h("label", { for: "api-key" }, "API key"), input, button, error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    button.disabled = true;
    error.textContent = "";
    try {
      await call("/jobs?limit=1", { token });
      key.set(token);
      if (!location.hash || location.hash === "#/" || location.hash.startsWith("#/sign-in")) location.hash = "#/jobs";
      else route();
    } catch (err) {
      error.textContent = `Sign-in failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
  clear(main).append(form);
  input.focus();
}

function stop() {
  if (current) current.abort.abort();
  current = null;
}

// what a page calls when an API call fails: a dead key signs out, anything else is shown and retried
function failed(err) {
  if (err && err.name === "AbortError") return;
  if (err instanceof ApiError && err.status === 401) {
    signIn(`Signed out: ${err.message}`);
    return;
  }
  showAlert(err instanceof ApiError ? `${err.message} (${err.code})` : String(err));
}

function route() {
  stop();
  showAlert("");
  if (!key.get()) {
    signIn();
    return;
  }
  signedIn(true);
  const { parts, params } = parseHash();
  const name = parts[0] || "jobs";
  const page = pages[name] || pages.jobs;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  const abort = new AbortController();
  current = { abort };
  const ctx = {
    signal: abort.signal,
    params,
    id: parts[1] || null,
    failed,
    ok: () => { if (!abort.signal.aborted) showAlert(""); },
    // run `fn` now and again after the delay it returns (ms; null stops), until the page changes
    live(fn) {
      const tick = async () => {
        if (abort.signal.aborted) return;
        let next = 5000;
        try {
          next = await fn();
          ctx.ok();
        } catch (err) {
          failed(err);
          if (err instanceof ApiError && err.status === 401) return;
          next = 5000;
        }
        if (next !== null && next !== undefined && !abort.signal.aborted) {
          const timer = setTimeout(tick, document.hidden ? Math.max(next, 10000) : next);
          abort.signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
        }
      };
      tick();
    },
  };
  clear(main);
  try {
    page(main, ctx);
  } catch (err) {
    failed(err);
  }
}

document.getElementById("sign-out").addEventListener("click", () => signIn());
window.addEventListener("hashchange", route);
route();

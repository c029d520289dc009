// The console's shell: login, navigation and the hash router that renders one view at a time.
//
// Routes: #/overview  #/graph  #/events?filters  #/event/ID  #/trace/ID  #/findings  #/replay
// A view is `async (main, params, path) => void`; while it loads <body data-state="loading">,
// then "ready" (or "error"), which the browser tests wait for.

import { clearToken, setToken, token, whenUnauthorized } from "./api.js";
import { clear, errorPanel, h } from "./dom.js";
import { renderEvent } from "./pages/event.js";
import { renderEvents } from "./pages/events.js";
import { renderFindings } from "./pages/findings.js";
import { renderGraph } from "./pages/graph.js";
import { renderOverview } from "./pages/overview.js";
import { renderReplay } from "./pages/replay.js";
import { renderTrace } from "./pages/trace.js";

const views = {
  overview: { title: "Overview", render: renderOverview },
  graph: { title: "Service graph", render: renderGraph },
  events: { title: "Events", render: renderEvents },
  event: { title: "Event", render: renderEvent, nav: "events" },
  trace: { title: "Trace", render: renderTrace, nav: "events" },
  findings: { title: "Findings", render: renderFindings },
  replay: { title: "Policy replay", render: renderReplay },
};

const main = document.getElementById("main");
let generation = 0;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [pathPart, queryPart] = raw.split("?", 2);
  const parts = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || "overview", rest: parts.slice(1), params: new URLSearchParams(queryPart || "") };
}

function setState(state) {
  document.body.dataset.state = state;
}

function showChrome(loggedIn) {
  document.getElementById("nav").hidden = !loggedIn;
  document.getElementById("logout").hidden = !loggedIn;
}

function renderLogin(reason) {
  showChrome(false);
  document.title = "Log in · auditmesh";
  document.body.dataset.page = "login";
  const input = h("input", {
    id: "token",
    type: "password",
    autocomplete: "current-password",
    placeholder: "API token",
    required: true,
    size: 48,
  });
  const form = h(
    "form",
    {
      id: "login",
      class: "panel login",
      onsubmit: (event) => {
        event.preventDefault();
        setToken(input.value.trim());
        if (!location.hash || location.hash === "#/login") location.hash = "#/overview";
        else route();
      },
    },
    h("h1", {}, "Log in"),
    h(
      "p",
      {},
      "Give the server's API token: ",
      h("code", {}, "auditmesh server"),
      " prints it at start and keeps it in ",
      h("code", {}, "DATA/keys/api.token"),
      ". It stays in this browser tab only (session storage).",
    ),
    reason ? errorPanel(reason) : "",
    h("label", { for: "token" }, "Token"),
    h("div", { class: "row" }, input, h("button", { type: "submit" }, "Log in")),
  );
  clear(main).append(form);
  input.focus();
  setState("ready");
}

async function route() {
  const mine = ++generation;
  const { name, rest, params } = parseHash();
  if (!token() || name === "login") {
    renderLogin();
    return;
  }
  const view = views[name];
  if (!view) {
    location.hash = "#/overview";
    return;
  }
  showChrome(true);
  document.title = `${view.title} · auditmesh`;
  document.body.dataset.page = name;
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (view.nav || name));
  }
  setState("loading");
  const container = h("section", { class: `view view-${name}` });
  clear(main).append(container);
  try {
    await view.render(container, params, rest, () => mine === generation);
    if (mine === generation) setState("ready");
  } catch (error) {
    if (mine !== generation) return;
    if (error.status === 401) return; // the login form has taken over
    container.append(errorPanel(error.message || String(error)));
    setState("error");
  }
}

whenUnauthorized((refused) => {
  // A view sends several requests at once: the first 401 shows the form; the others, and a
  // late one for a token already replaced, must not redraw it under the user's typing.
  if (refused !== token()) return;
  clearToken();
  generation++;
  renderLogin("The server refused that token.");
});

document.getElementById("logout").addEventListener("click", () => {
  clearToken();
  location.hash = "#/login";
  renderLogin();
});

window.addEventListener("hashchange", route);
route();

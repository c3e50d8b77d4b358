// ipgraph's extension for the ComfyUI editor (served by the ipgraph server at /extensions/ipgraph/).
//
// 1. The first screen. At start-up the editor restores the workflows of the last session (localStorage);
//    when there are none it calls app.loadGraphData() with no graph, which loads the frontend's built-in
//    default graph (Comfy.TutorialCompleted true) -- no setting or endpoint changes that graph. ipgraph
//    replaces it, and the "Load Default" command's graph, by the server's first workflow
//    (GET /ipgraph/first_workflow), a runnable graph on the bundled tiny models.
// 2. No request leaves the machine. With nodes it does not know on screen the editor looks them up in the
//    public node registry (api.comfy.org); release notes and account features do the same. fetch and
//    XMLHttpRequest are limited to this server's origin: any other URL fails locally, before it is sent.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const here = window.location.origin;

function isLocal(url) {
  try {
    const u = new URL(url, window.location.href);
    return u.origin === here || u.protocol === "data:" || u.protocol === "blob:";
  } catch {
    return true; // not a URL the browser could send
  }
}

const originalFetch = window.fetch.bind(window);
window.fetch = (input, init) => {
  const url = typeof input === "string" ? input : input?.url ?? String(input);
  if (!isLocal(url)) {
    console.info(`ipgraph: not sending a request off this machine: ${url}`);
    return Promise.reject(new TypeError(`ipgraph keeps requests on this machine (${url})`));
  }
  return originalFetch(input, init);
};
const originalOpen = XMLHttpRequest.prototype.open;
XMLHttpRequest.prototype.open = function (method, url, ...rest) {
  if (!isLocal(String(url))) {
    console.info(`ipgraph: not sending a request off this machine: ${url}`);
    // an unsendable URL: the request fails locally with a network error
    return originalOpen.call(this, method, "about:blank#ipgraph-blocked", ...rest);
  }
  return originalOpen.call(this, method, url, ...rest);
};

function isBuiltinDefault(graph) {
  const builtin = window.comfyAPI?.defaultGraph;
  if (!builtin) return false;
  if (graph === builtin.defaultGraph) return true;
  try {
    return JSON.stringify(graph) === builtin.defaultGraphJSON;
  } catch {
    return false;
  }
}

async function firstWorkflow() {
  try {
    const r = await originalFetch(`${api.api_base ?? ""}/ipgraph/first_workflow`);
    return r.ok ? await r.json() : null;
  } catch {
    return null;
  }
}

app.registerExtension({
  name: "ipgraph.firstScreen",
  async setup() {
    const load = app.loadGraphData.bind(app);
    app.loadGraphData = async function (graph, ...rest) {
      if (!graph || isBuiltinDefault(graph)) {
        const first = await firstWorkflow();
        if (first?.workflow) {
          if (rest.length < 3) rest = [rest[0] ?? true, rest[1] ?? true, first.name ?? null, ...rest.slice(3)];
          return load(first.workflow, ...rest);
        }
      }
      return load(graph, ...rest);
    };
  },
});

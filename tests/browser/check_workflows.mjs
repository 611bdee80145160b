// Load UI-format workflows into the real ComfyUI page in headless Chromium and report, per
// workflow, what would stop it from running: node types the server does not define, model
// files it names that are not installed, widget values the node does not accept, nodes the
// page flags with errors, and whatever the frontend itself reported. Plus a screenshot.
// Used by tests/integration/test_browser_workflows.py.
//
// usage: node check_workflows.mjs URL SCREENSHOT_DIR WORKFLOW.json...
// stdout: one JSON object {"results": [...], "page_errors": [...]}
//
// Frontends differ in how they tell a user (1.27, ComfyUI 0.3.64: a "Some Nodes Are Missing"
// dialog, and a missing-models dialog only for files listed in the workflow's "models";
// 1.49, ComfyUI 0.33.0: no dialog, but an error overlay, red node outlines and the Pinia
// stores missingNodesError / missingModel behind the errors panel). So the check does not rely
// on any one of them; it looks at the loaded graph itself and collects every frontend signal:
//
//   unknownTypes   node types absent from the server's /object_info (frontend-only virtual
//                  nodes such as Note excepted)
//   widgetErrors   a combo value that is not one of its options, a number outside min..max
//   missingModels  model file names (a combo value ending in .safetensors, .ckpt, ...) that are
//                  not among the options, plus every file a frontend reports missing
//   nodesWithErrors nodes the page marks with has_errors
//   graphMismatch  node ids/types of the page's graph that differ from the workflow file's
//                  (the page replaced the workflow with a graph of its own)
//   frontend       what the frontend reported: missing node types and models from its stores
//                  (the dialog stack on 1.27, missingNodesError / missingModel on 1.49),
//                  visible dialogs, error and warning toasts, the error overlay
//
// Each workflow gets a fresh browser context (own storage, page loaded anew), so nothing a
// previous workflow opened or stored can leak into the next report.
//
// The page loads a graph of its own while it starts, after window.app exists: a new user
// (Comfy.TutorialCompleted unset) gets a blank graph and the template browser, everyone else
// the frontend's default graph (on 1.49 a text-to-image template naming qwen_3_4b and
// z_image_turbo). That load is asynchronous and awaits the server, so a check that loads as
// soon as window.app exists can overlap it, and the start-up's graph or its missing models can
// end up in the report. Hence: the server's user must not be new (every visit starts the same
// way, no dialog), every loadGraphData call of the page is counted from the moment window.app
// is set, the check loads its workflow only once the start-up's load has settled, and the
// report says whether the page still holds the workflow it was given.
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, shotDir, ...workflowPaths] = process.argv.slice(2);
if (!url || !shotDir) {
  console.error('usage: node check_workflows.mjs URL SCREENSHOT_DIR WORKFLOW.json...');
  process.exit(2);
}

// The node types the server defines: the page's graph is compared against these.
const objectInfo = await (await fetch(new URL('object_info', url))).json();
const serverTypes = Object.keys(objectInfo);

// The server keeps the settings of its (single) user. A user who finished the tutorial starts
// with the default graph and no template browser, on every visit alike; a new user's first
// visit would differ from the next ones. The test layout sets the flag (ComfyLayout.create);
// the check reads it and does not change a server's settings itself.
const tutorial = await (await fetch(new URL('settings/Comfy.TutorialCompleted', url))).json();
if (tutorial !== true) {
  throw new Error('the server\'s user is new (Comfy.TutorialCompleted is not true): its pages would open '
                  + 'the template browser; start the server with ComfyLayout.create, which sets it');
}

// The network is closed: nothing may try to reach out. Playwright itself gives every launch a
// fresh, empty --user-data-dir (it refuses one passed in args).
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-dev-shm-usage', '--disable-extensions'],
});
const pageErrors = [];

// Runs in the page before its own scripts: wraps window.app.loadGraphData as soon as the
// frontend publishes the app, so the start-up's load is counted as well as the check's.
function countGraphLoads() {
  const loads = { started: 0, settled: 0 };
  let app;
  Object.defineProperty(window, '__textlocGraphLoads', { value: loads });
  Object.defineProperty(window, 'app', {
    configurable: true,
    get: () => app,
    set: (value) => {
      app = value;
      if (!value || value.__textlocCounted) return;
      const load = value.loadGraphData;
      value.loadGraphData = async function countedLoadGraphData(...args) {
        loads.started += 1;
        try { return await load.apply(this, args); } finally { loads.settled += 1; }
      };
      value.__textlocCounted = true;
    },
  });
}

// True once the page has started: the app is set up, its start-up load (at least one) has
// settled, none is in flight, and the workspace's start-up spinner (1.49) is off.
function startedAndIdle() {
  const loads = window.__textlocGraphLoads;
  return Boolean(window.app?.graph && window.LiteGraph?.registered_node_types
    && loads.started > 0 && loads.settled === loads.started && !window.app.extensionManager?.spinner);
}

// Node ids and types of the workflow file against those of the page's root graph: anything
// listed means the page holds a graph other than the one the check loaded.
function graphMismatch(workflow) {
  const key = (n) => `${n.id}:${n.type}`;
  const given = new Set(workflow.nodes.map(key));
  const held = new Set((window.app.graph._nodes || window.app.graph.nodes || []).map(key));
  return [...[...given].filter((k) => !held.has(k)).map((k) => `not in the page: ${k}`),
          ...[...held].filter((k) => !given.has(k)).map((k) => `not in the workflow: ${k}`)];
}

// Runs in the page after the workflow loaded: the report of the graph and of the frontend.
function inspectPage(serverTypes) {
  const MODEL_FILE = /\.(safetensors|sft|ckpt|pt|pth|bin|gguf|onnx)$/i;
  const known = new Set(serverTypes);
  const graph = window.app.graph;
  const graphs = [graph, ...(graph.subgraphs?.values?.() ?? [])];
  const nodes = graphs.flatMap((g) => g._nodes || g.nodes || []);
  const label = (n) => `${n.id}:${n.type}`;
  const isDefined = (n) => known.has(n.type) || n.isVirtualNode || n.isSubgraphNode?.();

  const widgetErrors = [];
  const missingModels = new Set();
  for (const n of nodes) {
    for (const w of n.widgets || []) {
      let values = w.options?.values;
      if (typeof values === 'function') {
        try { values = values(w, n); } catch { values = undefined; }
      }
      if (w.type === 'combo' && Array.isArray(values) && !values.includes(w.value)) {
        widgetErrors.push(`${label(n)} ${w.name}=${JSON.stringify(w.value)} is not one of its ${values.length} options`);
        if (typeof w.value === 'string' && MODEL_FILE.test(w.value)) missingModels.add(w.value);
      } else if (w.type === 'number' && typeof w.value === 'number') {
        const { min, max } = w.options || {};
        if (!Number.isFinite(w.value) || (min != null && w.value < min) || (max != null && w.value > max)) {
          widgetErrors.push(`${label(n)} ${w.name}=${w.value} is outside ${min}..${max}`);
        }
      }
    }
  }

  // What the frontend reported, from its Pinia stores (both frontends use Pinia).
  const stores = document.querySelector('#vue-app')?.__vue_app__?.config?.globalProperties?.$pinia?._s;
  const store = (id) => stores?.get(id);
  const typeOf = (t) => (typeof t === 'string' ? t : t?.type);
  const reportedTypes = new Set();
  const reportedModels = new Set();
  for (const t of store('missingNodesError')?.missingNodesError?.nodeTypes ?? []) reportedTypes.add(typeOf(t));
  for (const c of store('missingModel')?.missingModelCandidates ?? []) if (c.isMissing) reportedModels.add(c.name);
  const dialogStack = store('dialog')?.dialogStack ?? [];
  for (const d of dialogStack) {
    for (const t of d.contentProps?.missingNodeTypes ?? []) reportedTypes.add(typeOf(t));
    for (const m of d.contentProps?.missingModels ?? []) reportedModels.add(m.name);
  }
  for (const m of reportedModels) missingModels.add(m);

  const visible = (selector) => Array.from(document.querySelectorAll(selector))
    .filter((d) => d.offsetParent !== null || d.getClientRects().length)
    .map((d) => d.innerText.trim());
  return {
    nodeCount: nodes.length,
    unknownTypes: [...new Set(nodes.filter((n) => !isDefined(n)).map((n) => n.type))],
    missingModels: [...missingModels].sort(),
    widgetErrors,
    nodesWithErrors: nodes.filter((n) => n.has_errors).map(label),
    dialogs: visible('.p-dialog, [role=dialog]'),
    frontend: {
      missingNodeTypes: [...reportedTypes].sort(),
      missingModels: [...reportedModels].sort(),
      dialogKeys: dialogStack.map((d) => d.key),
      toasts: visible('.p-toast-message-error, .p-toast-message-warn'),
      errorOverlay: visible('[data-testid=error-overlay]'),
    },
  };
}

try {
  const results = [];
  for (const path of workflowPaths) {
    const workflow = JSON.parse(readFileSync(path, 'utf8'));
    const context = await browser.newContext({ viewport: { width: 2400, height: 1350 } });
    try {
      await context.addInitScript(countGraphLoads);
      const page = await context.newPage();
      page.on('pageerror', (e) => pageErrors.push(`${basename(path)}: ${e}`));
      await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 60000 });
      await page.waitForFunction(startedAndIdle, null, { timeout: 90000 }).catch((e) => {
        throw new Error(`${basename(path)}: the page did not finish its own start-up load: ${e.message}`);
      });
      await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
      // dialogs and toasts (1.27) may open after the load resolves; a load of the page's own
      // would show in graphMismatch
      await page.waitForTimeout(1500);
      await page.waitForFunction(startedAndIdle, null, { timeout: 30000 });
      const report = await page.evaluate(inspectPage, serverTypes);
      report.graphMismatch = await page.evaluate(graphMismatch, workflow);
      try {  // frame the whole graph for the screenshot; the command id is the frontend's
        await page.evaluate(() => window.app.extensionManager?.command?.execute('Comfy.Canvas.FitView'));
        await page.waitForTimeout(300);
      } catch { /* older frontends: keep the default view */ }
      const screenshot = join(shotDir, basename(path).replace(/\.json$/, '.png'));
      await page.screenshot({ path: screenshot });
      results.push({ workflow: path, ...report, screenshot });
    } finally {
      await context.close();
    }
  }
  console.log(JSON.stringify({ results, page_errors: pageErrors }));
} finally {
  await browser.close();
}

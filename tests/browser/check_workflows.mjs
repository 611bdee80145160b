// Load UI-format workflows into the real ComfyUI page in headless Chromium and report,
// per workflow, the node types the page does not know, the text of any missing-node
// dialog, and a screenshot. Used by test_workflows_in_browser.py.
//
// usage: node check_workflows.mjs URL SCREENSHOT_DIR WORKFLOW.json...
// stdout: one JSON object {"results": [...], "page_errors": [...]}
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, shotDir, ...workflowPaths] = process.argv.slice(2);
if (!url || !shotDir) {
  console.error('usage: node check_workflows.mjs URL SCREENSHOT_DIR WORKFLOW.json...');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
         '--disable-background-networking', '--disable-extensions', '--no-first-run'],
});
const pageErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 2400, height: 1350 } });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 60000 });
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types,
                             null, { timeout: 90000 });

  const openDialogs = () => page.evaluate(() =>
    Array.from(document.querySelectorAll('.p-dialog, [role=dialog]'))
      .filter((d) => d.offsetParent !== null)
      .map((d) => d.innerText.trim()));

  const results = [];
  for (const path of workflowPaths) {
    const workflow = JSON.parse(readFileSync(path, 'utf8'));
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
    // the missing-node dialog opens asynchronously after the load resolves
    await page.waitForTimeout(1500);
    const graph = await page.evaluate(() => {
      const known = window.LiteGraph.registered_node_types;
      const nodes = window.app.graph._nodes || window.app.graph.nodes || [];
      return {
        nodeCount: nodes.length,
        unknownTypes: [...new Set(nodes.filter((n) => !(n.type in known)).map((n) => n.type))],
        nodesWithErrors: nodes.filter((n) => n.has_errors).map((n) => `${n.id}:${n.type}`),
      };
    });
    const dialogs = await openDialogs();
    try {  // frame the whole graph for the screenshot; the command id is the frontend's
      await page.evaluate(() => window.app.extensionManager?.command?.execute('Comfy.Canvas.FitView'));
      await page.waitForTimeout(300);
    } catch { /* older frontends: keep the default view */ }
    const screenshot = join(shotDir, basename(path).replace(/\.json$/, '.png'));
    await page.screenshot({ path: screenshot });
    results.push({ workflow: path, ...graph, dialogs, screenshot });
    // close whatever dialog opened so the next workflow starts clean
    for (let i = 0; i < 3 && (await openDialogs()).length; i++) await page.keyboard.press('Escape');
  }
  console.log(JSON.stringify({ results, page_errors: pageErrors }));
} finally {
  await browser.close();
}

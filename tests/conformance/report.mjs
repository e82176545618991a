// Results table of one `conformance client -o DIR` run, judged against an
// expected-failures baseline. Used by run.sh:
//
//   node report.mjs REVISION RESULTS_DIR BASELINE.yaml REQUIREMENTS.yaml
//
// A scenario fails when any of its checks is FAILURE or WARNING (the suite's
// own rule); the `client` column says whether mcpd-conformance-client itself
// saw every step work (its stderr.txt says which did not). Every scenario the run produced is judged, the ones the revision
// does not score included. Exits 1 on a failure the baseline does not list
// or a listed scenario that passed (a stale entry), as the suite does.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

const [revision, resultsDir, baselineFile, requirementsFile, flakyFile] = process.argv.slice(2);

// Scenarios known to pass or fail by timing (flaky-<rev>.txt: one scenario a
// line, `#` comments saying why): either outcome is accepted and shown.
const flaky = new Set(
  (flakyFile && existsSync(flakyFile) ? readFileSync(flakyFile, 'utf8') : '')
    .split('\n')
    .map((line) => line.replace(/#.*/, '').trim())
    .filter(Boolean),
);
if (!requirementsFile) {
  console.error('usage: report.mjs REVISION RESULTS_DIR BASELINE.yaml REQUIREMENTS.yaml');
  process.exit(2);
}

// The `client:` list of a YAML file written as these files are: a top-level
// key, then `  - item` lines (comments allowed). Enough for both files here.
function clientList(text) {
  const items = [];
  let inClient = false;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\s+#.*$/, '').replace(/^#.*$/, '');
    if (/^\S/.test(line)) {
      inClient = /^client:\s*$/.test(line);
      continue;
    }
    const item = inClient && line.match(/^\s+-\s+['"]?([^'"\s]+)['"]?\s*$/);
    if (item) items.push(item[1]);
  }
  return items;
}

const baseline = new Map(); // scenario -> Set of check ids (empty: whole scenario)
for (const entry of clientList(readFileSync(baselineFile, 'utf8'))) {
  const colon = entry.indexOf(':');
  const scenario = colon === -1 ? entry : entry.slice(0, colon);
  const checks = baseline.get(scenario) ?? new Set();
  if (colon !== -1) checks.add(entry.slice(colon + 1));
  baseline.set(scenario, checks);
}
const scored = new Set(clientList(readFileSync(requirementsFile, 'utf8')));

// RESULTS_DIR/<scenario>-<ISO timestamp with : and . as ->/checks.json
function* checkFiles(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* checkFiles(path);
    else if (name === 'checks.json') yield path;
  }
}
const results = [];
for (const file of checkFiles(resultsDir)) {
  const dir = relative(resultsDir, join(file, '..')).split(sep).join('/');
  const scenario = dir.replace(/-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/, '');
  const checks = JSON.parse(readFileSync(file, 'utf8'));
  const bad = checks.filter((c) => c.status === 'FAILURE' || c.status === 'WARNING');
  const counted = checks.filter((c) => c.status === 'SUCCESS' || c.status === 'FAILURE');
  const passed = counted.filter((c) => c.status === 'SUCCESS').length;
  // The client's own verdict (the suite ignores its exit status in a run of
  // many scenarios): it prints this line when a step failed.
  const stderr = join(file, '..', 'stderr.txt');
  const clientFailed =
    existsSync(stderr) && readFileSync(stderr, 'utf8').includes('mcpd-conformance-client: FAILED');
  results.push({ scenario, bad, passed, counted: counted.length, clientFailed });
}
results.sort((a, b) => a.scenario.localeCompare(b.scenario));

const unexpected = [];
const stale = [];
const rows = results.map((r) => {
  const listed = baseline.get(r.scenario);
  const failed = r.bad.length > 0;
  let note = '';
  if (flaky.has(r.scenario)) {
    note = failed ? 'flaky: failed this time (allowed)' : 'flaky: passed';
  } else if (listed && listed.size === 0) {
    note = failed ? 'expected (baseline)' : 'STALE: passes, remove from baseline';
    if (!failed) stale.push(r.scenario);
  } else if (listed) {
    const extra = r.bad.filter((c) => !listed.has(c.id));
    const passing = [...listed].filter((id) => !r.bad.some((c) => c.id === id));
    note = extra.length ? `UNEXPECTED: ${[...new Set(extra.map((c) => c.id))].join(', ')}` : 'expected (baseline checks)';
    if (extra.length) unexpected.push(r.scenario);
    if (passing.length && !extra.length && !failed) stale.push(r.scenario);
  } else if (failed) {
    note = 'UNEXPECTED';
    unexpected.push(r.scenario);
  }
  const why = failed
    ? [...new Set(r.bad.map((c) => `${c.status === 'WARNING' ? 'warning ' : ''}${c.id}`))].join(', ')
    : '';
  return {
    scenario: r.scenario,
    scoring: scored.has(r.scenario) ? 'scored' : 'not scored',
    result: failed ? 'FAIL' : 'pass',
    checks: `${r.passed}/${r.counted}`,
    client: r.clientFailed ? 'failed' : 'ok',
    note,
    why
  };
});

const cols = ['scenario', 'scoring', 'result', 'checks', 'client', 'note'];
const width = Object.fromEntries(
  cols.map((c) => [c, Math.max(c.length, ...rows.map((r) => r[c].length))])
);
const line = (r) => cols.map((c) => r[c].padEnd(width[c])).join('  ').trimEnd();
console.log(`MCP client conformance of mcpd, requirements ${revision}`);
console.log(line(Object.fromEntries(cols.map((c) => [c, c]))));
for (const r of rows) {
  console.log(line(r));
  if (r.why) console.log(`    failing checks: ${r.why}`);
}
const passedScored = rows.filter((r) => r.scoring === 'scored' && r.result === 'pass').length;
const allScored = rows.filter((r) => r.scoring === 'scored').length;
const passedAll = rows.filter((r) => r.result === 'pass').length;
console.log(
  `${passedScored} of ${allScored} scored scenarios pass (${passedAll} of ${rows.length} run)`
);
const missing = [...scored].filter((s) => !results.some((r) => r.scenario === s));
if (missing.length) {
  console.log(`no results for scored scenario(s): ${missing.join(', ')}`);
  unexpected.push(...missing);
}
if (unexpected.length) console.log(`unexpected failures: ${unexpected.join(', ')}`);
if (stale.length) console.log(`stale baseline entries (now passing): ${stale.join(', ')}`);
console.log(unexpected.length || stale.length ? 'verdict: FAIL\n' : 'verdict: ok\n');
process.exit(unexpected.length || stale.length ? 1 : 0);

// A person authorizing mcpd, played by headless Chromium (Debian's package,
// driven by playwright-core): open the authorization URL, press "Allow" on
// the authorization server's consent page, and follow the redirect back to
// mcpd's callback. Prints what the browser ends on as one JSON line:
// {"url", "title", "message"}.
//
//   node authorize-in-browser.mjs AUTHORIZATION_URL [SCREENSHOT.png]
//
// CHROMIUM overrides the browser (default /usr/bin/chromium).
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url) {
  console.error("usage: node authorize-in-browser.mjs AUTHORIZATION_URL [SCREENSHOT.png]");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // Root in a container has no sandbox; the rest keeps Chromium off the
  // network except for the pages it is sent to.
  chromiumSandbox: false,
  args: [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.click("#allow");
  await page.waitForURL(/\/oauth\/callback\?/);
  await page.waitForSelector("#message");
  if (screenshot) await page.screenshot({ path: screenshot });
  console.log(
    JSON.stringify({
      url: page.url(),
      title: await page.title(),
      message: await page.textContent("#message"),
    }),
  );
} finally {
  await browser.close();
}

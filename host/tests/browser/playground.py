#!/usr/bin/env python3
"""Drives the playground page (`GET /`) in headless Chromium and prints what it streamed, as JSON.

usage: playground.py URL PROMPT MAX_TOKENS

Opens URL in Debian's Chromium through Playwright, sets greedy sampling (temperature 0) and
MAX_TOKENS, types PROMPT, clicks Generate, and waits for the status line to say "done". Prints
{"model", "prompt", "generated", "status", "chunks"} where `chunks` counts how many times the
output grew while streaming (more than one proves the page streamed rather than waited).
Called by host/tests/e2e/browser.rs, which compares `generated` with the API's own answer.
Chromium flags: headless, no sandbox (CI runs as root), no background networking (the machine
has no internet and refuses those connections).
"""
import json
import os
import sys
import tempfile

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("TINYSTATE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Records every length the generated text passes through, so the caller can see it streamed.
WATCH = """() => {
  window.__lengths = [];
  const out = document.getElementById("out");
  new MutationObserver(() => window.__lengths.push(out.textContent.length))
    .observe(out, { characterData: true, childList: true, subtree: true });
}"""


def main() -> int:
    url, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3]
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=FLAGS)
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent !== '…'")
        page.fill("#prompt", prompt)
        page.fill("#temperature", "0")
        page.fill("#max_tokens", max_tokens)
        page.evaluate(WATCH)
        page.click("#go")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')"
                               " || document.getElementById('status').className === 'err'",
                               timeout=120_000)
        out = page.inner_text("#out")
        result = {
            "model": page.inner_text("#model"),
            "prompt": page.inner_text("#out .prompt"),
            "generated": page.evaluate("document.getElementById('out').lastChild.textContent"),
            "text": out,
            "status": page.inner_text("#status"),
            "chunks": len(set(page.evaluate("window.__lengths"))),
        }
        ctx.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
